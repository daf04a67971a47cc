"""csvfile: lines read a block at a time are the file's lines, at every block size; the second pass reads
exactly the bytes the first one checked."""

from __future__ import annotations

import csv
import re
import tempfile
from pathlib import Path
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer import csvfile
from mailer.csvfile import CsvFile
from mailer.errors import FileChanged, SubscriberError

TEXT = st.text(alphabet='ab,";\r\n\u00e9', max_size=80)


def _lines(data: bytes) -> list[bytes]:
    """The file's physical lines as the reader must see them: split after each \\n only."""
    return re.findall(rb"[^\n]*\n|[^\n]+", data)


@settings(max_examples=300, deadline=None)
@given(text=TEXT, block=st.integers(1, 9), longer=st.integers(0, 6))
def test_lines_and_records_match_the_file_at_any_block_size(text: str, block: int, longer: int) -> None:
    max_line = block + longer  # a line within one block is never too long: BLOCK <= MAX_LINE
    data = text.encode("utf-8")
    lines = _lines(data)
    with tempfile.TemporaryDirectory() as folder, patch.object(csvfile, "BLOCK", block):
        path = Path(folder) / "list.csv"
        path.write_bytes(data)
        with patch.object(csvfile, "MAX_LINE", max_line), CsvFile(path, "list") as source:
            first = [(r.first, r.cells, r.error) for r in source.records(None)]
            source.scan(None, after=0, consequence="-")
            second = [(r.first, r.cells, r.error) for r in source.records(None)]
        long_error = f"longer than {max_line} bytes"
        assert first == second
        assert [n for n, _, _ in first] == list(range(1, len(lines) + 1))
        for (_, cells, error), raw in zip(first, lines, strict=True):
            if len(raw) > max_line:
                assert long_error in error and cells == [""]
            else:
                assert cells == [raw.decode("utf-8").rstrip("\r\n")] and error == ""
        with CsvFile(path, "list") as source:
            records = list(source.records(","))  # before the scan: read as they come
            swallowing = [r for r in records if r.last > r.first or any("\n" in c for c in r.cells)]
            try:
                count = source.scan(",", after=0, consequence="-")
            except SubscriberError as exc:  # the scan's own loop agrees with the records
                assert swallowing and str(exc).startswith(f"{path}:{swallowing[0].first}: a quoted field")
                return
            assert not swallowing
            assert count == sum(not r.blank for r in records)
            got = [r.cells for r in source.records(",") if not r.error]
    reader = csv.reader(line.decode("utf-8") for line in lines)
    expected = []
    while True:
        try:
            expected.append(next(reader))
        except StopIteration:
            break
        except csv.Error:
            continue  # a bad row for the reader too, which drops it
    assert got == expected


def test_a_file_changed_between_the_scan_and_the_read_stops_at_the_changed_block(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    rows = [f"reader{i:05}@example.com,Reader {i}\n" for i in range(10_000)]  # ~330 KB: 6 blocks
    path.write_text("email,name\n" + "".join(rows), encoding="utf-8")
    with CsvFile(path, "subscriber list") as source:
        source.scan(",", after=1, consequence="-")
        records = source.records(",")
        assert next(records).cells == ["email", "name"]
        with path.open("r+b") as out:  # the same length, one letter different, in the last block
            out.seek(-10, 2)
            out.write(b"X")
        got = []
        with pytest.raises(FileChanged) as info:
            for record in records:
                got.append(record.cells[0])
    assert got == [row.split(",")[0] for row in rows[: len(got)]]
    # every row that ends before the changed block was read, and none that reaches into it
    block_start = (path.stat().st_size - 10) // csvfile.BLOCK * csvfile.BLOCK
    read = len("email,name\n") + sum(len(row) for row in rows[: len(got)])
    assert block_start - max(len(row) for row in rows) < read <= block_start
    assert "changed on disk while it was being read" in str(info.value)
    assert str(info.value).startswith(f"{path}:{len(got) + 2}: ")
