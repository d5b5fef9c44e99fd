"""Plain-text helpers shared by the execution, the report and the marking code: ANSI codes out
of kernel output, numbers as people read them. No torch here: the report imports this."""

from __future__ import annotations

import math
import re

# An ECMA-48 control sequence (CSI): ESC [, parameter bytes 0x30-0x3F, intermediate bytes
# 0x20-0x2F, one final byte 0x40-0x7E; IPython's coloured tracebacks are made of these.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def strip_ansi(text: str) -> str:
    return ANSI_ESCAPE.sub("", text)


def format_decimal(value: float, digits: int) -> str:
    """value rounded to `digits` decimals as people write it: 1, 0.5, -1.25 (no trailing zeros,
    no exponent, never "-0")."""
    text = f"{round(value, digits):.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def format_quantity(value: float | None, digits: int = 4, *, missing: str = "—", exponent_from: float = 1e5,
                    spec: str | None = None, non_finite: str | None = None) -> str:
    """A measured number as the reports, the scoring messages and the reference table write it.

    By default `digits` significant digits, in exponent form (two decimals) below 1e-3 and from
    `exponent_from` up; a format `spec` (a table column's fixed decimals) replaces that rule.
    None reads as `missing`; inf and nan as Python writes them, or as `non_finite` where given.
    Anything that is not an int or a float, a bool included, is written with str(): the report's
    templates pass whatever a field holds through this as their `num` filter."""
    if value is None:
        return missing
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(value):
        return str(value) if non_finite is None else non_finite
    if spec is not None:
        return format(value, spec)
    if value != 0 and (abs(value) >= exponent_from or abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.{digits}g}"
