"""Plain-text helpers shared by the execution, the report and the marking code: ANSI codes out
of kernel output, numbers as people read them. No torch here: the report imports this."""

from __future__ import annotations

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
