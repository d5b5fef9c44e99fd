"""Reading a CSV that people saved from a spreadsheet (marking sheets, rosters): UTF-8 with or
without Excel's BOM, and `,`, `;` (locales with decimal commas) or tab as the delimiter."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..errors import GraderError

DELIMITERS = (",", ";", "\t")


def read_utf8(path: Path, what: str, error: type[GraderError]) -> str:
    """The file's text; `error` names the file and says how to save it when it is not UTF-8."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror})") from exc
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise error(f"{path}: UTF-16 text, not a UTF-8 CSV (in Excel: Save As 'CSV UTF-8')")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}); save it as 'CSV UTF-8' "
                    f"(Excel) or with UTF-8 encoding") from exc


def records_by_header(text: str, key_column: str) -> list[list[str]] | None:
    """The records, split with the first delimiter whose header row names key_column (in any
    case); None when no delimiter gives such a header."""
    for delimiter in DELIMITERS:
        try:
            records = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True))
        except csv.Error:
            continue
        if records and key_column in [h.strip().lower() for h in records[0]]:
            return records
    return None
