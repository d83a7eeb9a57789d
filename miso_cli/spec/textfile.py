"""The text files a person hands to miso (CSV tables, plan JSON), read in one place.

Whatever can go wrong before the content is even looked at (a missing file, a
folder, bytes that are not UTF-8, a CSV cell longer than the csv module allows)
becomes a :class:`~miso_cli.errors.BadInput` naming the file and, where there
is one, the line.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from pathlib import Path

from miso_cli.errors import BadInput


def read_text(path: Path | str, what: str) -> str:
    """``path`` as text (UTF-8; a leading byte-order mark is dropped).

    ``what`` names the file's role in messages, e.g. ``"catalog"`` or ``"plan"``.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BadInput(
            f"{path}:{line}: {what} is not UTF-8 text (byte {exc.start})",
            hint="save it as UTF-8",
        ) from None


class CsvReader(csv.DictReader):  # type: ignore[type-arg]
    """A ``csv.DictReader`` whose format errors name the file and line."""

    def __init__(self, path: Path, text: str) -> None:
        super().__init__(io.StringIO(text, newline=""))
        self.path = path

    def __enter__(self) -> CsvReader:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _fail(self, exc: csv.Error) -> BadInput:
        # The csv module counts a line once it has parsed it: the bad one is the next.
        return BadInput(f"{self.path}:{self.line_num + 1}: not a valid CSV row ({exc})")

    @property  # type: ignore[override]
    def fieldnames(self) -> list[str] | None:
        try:
            return super().fieldnames  # type: ignore[return-value]
        except csv.Error as exc:
            raise self._fail(exc) from None

    @fieldnames.setter
    def fieldnames(self, value: list[str] | None) -> None:
        self._fieldnames = value

    def __iter__(self) -> Iterator[dict[str, str]]:  # type: ignore[override]
        return self

    def __next__(self) -> dict[str, str]:
        try:
            return super().__next__()
        except csv.Error as exc:
            raise self._fail(exc) from None


def csv_reader(path: Path | str, what: str) -> CsvReader:
    """A dict reader over the CSV file ``path`` (read whole: these files are small)."""
    path = Path(path)
    return CsvReader(path, read_text(path, what))


def positive_cell(
    path: Path, line: int, column: str, text: str, *, what: str | None = None
) -> float | None:
    """A CSV cell that holds a positive, finite number, or nothing (None).

    ``what`` names the quantity in the message (``"step time"``)."""
    text = text.strip()
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadInput(f"{path}:{line}: column {column}: {text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        rule = (
            f"{what} must be positive and finite" if what else "must be a positive, finite number"
        )
        raise BadInput(f"{path}:{line}: column {column}: {rule}, got {text}")
    return value
