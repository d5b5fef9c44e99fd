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


def test_format_decimal_writes_numbers_as_people_do():
    assert [text.format_decimal(v, 2) for v in (18, 15.17, 8.3, 0.5, -1.25, 2 / 3, 0.004, -0.004, -0.0)] == [
        "18", "15.17", "8.3", "0.5", "-1.25", "0.67", "0", "0", "0"]
    assert text.format_decimal(12345.678, 2) == "12345.68"   # no exponent, all the digits
    assert text.format_decimal(1 / 3, 6) == "0.333333"


def test_the_three_points_formatters_are_one_rounding():
    from grader.marking import app, sheet

    for value in (0, 1, 2 / 3, -2 / 3, 0.125, -0.004, 17.999999, 1e-7):
        assert report.fmt_points(value) == text.format_decimal(value, 2)            # the PDF
        assert sheet.format_number(value) == text.format_decimal(value, 6)          # the sheet
        assert app._points(value).lstrip("+") == report.fmt_points(value)           # the page, signed
    assert [app._points(v) for v in (1.5, -0.25, 0.004, -0.004, None)] == ["+1.5", "-0.25", "0", "0", "—"]
    assert sheet.format_number(2 / 3) == "0.666667" and float(sheet.format_number(0.1 + 0.2)) == 0.3
