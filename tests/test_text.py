"""grader.text: the one ANSI stripper the execution, the report and the marking evidence use."""

from __future__ import annotations

from grader import execute, report, text


def test_strip_ansi_removes_colour_and_cursor_sequences_only():
    coloured = ("\x1b[0;31mNameError\x1b[0m: name \x1b[38;5;241m'x'\x1b[39m is not defined"
                "\x1b[?25l progress\x1b[2K 50%\x1b[1G")
    assert text.strip_ansi(coloured) == "NameError: name 'x' is not defined progress 50%"
    assert text.strip_ansi("a [0;31m b \x1b c") == "a [0;31m b \x1b c"   # no CSI, nothing removed


def test_execute_and_report_share_it():
    assert execute.strip_ansi is text.strip_ansi and report.strip_ansi is text.strip_ansi
