"""Students' markdown answers as safe HTML, with `$...$` / `$$...$$` maths drawn as inline SVG.

The answer's markdown goes through markdown-it-py with raw HTML disabled (so `<link>`, `<img>`
and friends come out as visible text), the dollarmath plugin picks out the formulas, nh3 (the
maintained ammonia sanitizer; bleach is deprecated) keeps only a whitelist of formatting tags,
and only then are the formulas put back as SVG made by ziamath (pure Python, no JavaScript or
TeX install). A formula ziamath cannot draw is shown as its TeX source in a code span, so
nothing the student wrote is silently lost.
"""

from __future__ import annotations

import functools
import re
import xml.etree.ElementTree as ET

import nh3
import ziamath
from markdown_it import MarkdownIt
from markupsafe import Markup, escape
from mdit_py_plugins.dollarmath import dollarmath_plugin

# Body text is 10pt = 13.3 CSS px: formulas match it.
MATH_SIZE_PX = 13.5
# Caps so one pathological answer cannot stall rendering (ziamath takes ~5-20 ms a formula).
MAX_FORMULAS = 60
MAX_FORMULA_CHARS = 300

ALLOWED_TAGS = frozenset({
    "p", "br", "em", "strong", "del", "s", "code", "pre", "blockquote", "hr",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "thead", "tbody", "tr", "th", "td", "span", "div",
})
# No href/src/style anywhere: nothing a student writes may point the PDF renderer at a resource.
ALLOWED_ATTRIBUTES = {"ol": {"start"}, "span": {"class"}, "div": {"class"}}

# Formula placeholders, in Unicode private-use characters that survive markdown and the sanitizer.
_OPEN, _CLOSE = "\ue000", "\ue001"
_PLACEHOLDER = re.compile(f"{_OPEN}(\\d+){_CLOSE}")

# What ziamath emits; anything else (an <image>, a foreign element) means the SVG is not used.
_SVG_TAGS = {"svg", "g", "path", "rect", "line", "polyline", "polygon", "circle", "ellipse", "title", "desc"}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _plain_svg(element: ET.Element) -> bool:
    """True when the SVG holds only drawing elements and no references to other resources."""
    for node in element.iter():
        if _local(node.tag) not in _SVG_TAGS:
            return False
        for name, value in node.attrib.items():
            if _local(name) == "href" or "url(" in value:
                return False
    return True


@functools.lru_cache(maxsize=2048)
def tex_to_svg(tex: str, display: bool = False) -> str | None:
    """SVG markup of a TeX formula, vertically aligned on the text baseline; None if it fails."""
    tex = tex.strip()
    if not tex or len(tex) > MAX_FORMULA_CHARS:
        return None
    # SVG 1.1 output draws each glyph as a <path>; SVG 2 output shares glyphs through <symbol>
    # ids, which collide between formulas in one HTML page ("Anchor defined twice").
    ziamath.config.svg2 = False
    try:
        svg = ziamath.Math.fromlatex(tex, size=MATH_SIZE_PX, inline=not display).svgxml()
    except Exception:  # latex2mathml and ziamath raise many kinds (IndexError, KeyError, ...)
        return None
    if not _plain_svg(svg):
        return None
    # The viewBox puts the baseline at y=0: shift the box down by the part below it.
    try:
        _, top, _, height = (float(v) for v in svg.get("viewBox", "").split())
    except ValueError:
        return None
    svg.set("class", "math-svg")
    svg.set("style", f"vertical-align: {-(top + height):.3f}px")
    svg.set("role", "img")
    svg.set("aria-label", tex)
    return ET.tostring(svg, encoding="unicode")


def _tex_source_html(tex: str, display: bool) -> str:
    delimiter = "$$" if display else "$"
    return f'<code class="tex-source">{escape(delimiter + tex + delimiter)}</code>'


def _formula_html(tex: str, display: bool) -> str:
    svg = tex_to_svg(tex, display)
    return _tex_source_html(tex, display) if svg is None else svg


def _markdown_parser(formulas: list[tuple[str, bool]]) -> MarkdownIt:
    def placeholder(content: str, options: dict) -> str:
        formulas.append((content, bool(options.get("display_mode"))))
        return f"{_OPEN}{len(formulas) - 1}{_CLOSE}"

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.disable("image")  # an image would be fetched; `![x](url)` stays as text
    # Dollar pairs are read as Jupyter's MathJax reads them (spaces and digits allowed), so the
    # report shows what the student saw in their notebook.
    md.use(dollarmath_plugin, renderer=placeholder, allow_space=True, allow_digits=True,
           double_inline=True, allow_labels=False)
    return md


def markdown_to_html(text: str) -> Markup:
    """A student's markdown as sanitized HTML with maths as inline SVG."""
    text = text.replace(_OPEN, "").replace(_CLOSE, "")
    formulas: list[tuple[str, bool]] = []
    html = _markdown_parser(formulas).render(text)
    # Tags outside the whitelist are dropped and their text kept, and no URL scheme is allowed.
    # No <a> is whitelisted, so there is no link to give a rel attribute to.
    clean = nh3.clean(html, tags=set(ALLOWED_TAGS), attributes=ALLOWED_ATTRIBUTES, url_schemes=set(),
                      link_rel=None, strip_comments=True)

    def restore(match: re.Match) -> str:
        index = int(match.group(1))
        if index >= len(formulas):
            return ""
        tex, display = formulas[index]
        if index >= MAX_FORMULAS:
            return _tex_source_html(tex, display)
        return _formula_html(tex, display)

    return Markup(_PLACEHOLDER.sub(restore, clean))
