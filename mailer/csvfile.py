"""Line-aware CSV reading for subscriber lists and suppression files: check the whole file, then stream it.

A file is opened once and read in two passes. The first (`scan`) checks what no single row can show: a quote
that is never closed turns every line after it into one field, so the rows it swallows are not bad rows but
missing ones; a line that is not UTF-8 means the file as a whole was saved in another encoding. Either
refuses the file before any row is used. The first pass also keeps a digest of every 64 KB block and the
SHA-256 of the whole (the file's identity, from the same bytes: no pass of its own), and can hand each row to
the caller (to count what it will use); the second pass (`records`) checks each block against its digest
before parsing a line of it and stops at the size that was checked, so what is used is exactly what was
checked, even when the file is edited meanwhile (`FileChanged`). Every record knows the physical lines it
spans.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import os
import re
import stat
from array import array
from collections.abc import Callable, Iterator
from hashlib import blake2b
from pathlib import Path
from typing import NamedTuple

from .errors import FileChanged, SubscriberError

BLOCK = 1 << 16
MAX_LINE = 1 << 20  # a longer physical line is a bad row, so one broken line cannot fill memory
FIELD_LIMIT = csv.field_size_limit()

_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_SHOWN = 5  # problem lines named in a refusal; the rest are counted


class Record(NamedTuple):
    """One CSV record: its cells, or why it could not be read, and the physical lines it spans."""

    first: int
    last: int
    cells: list[str]
    error: str  # "" when the cells were read

    @property
    def blank(self) -> bool:
        """A record with nothing in it (an empty line, or only separators)."""
        if self.error:
            return False
        for cell in self.cells:
            if cell.strip():
                return False
        return True


class CsvFile:
    """A regular file opened once for reading; `scan` must run before `records` streams it."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        try:
            info = os.stat(path)
            if stat.S_ISDIR(info.st_mode):
                raise SubscriberError(f"{path}: is a directory, not a {what}")
            if not stat.S_ISREG(info.st_mode):
                raise SubscriberError(f"{path}: not a regular file (a {what} is read twice)")
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SubscriberError(f"{path}: {what} not found") from None
        except OSError as exc:
            raise SubscriberError(f"{path}: cannot read: {exc.strerror}") from None
        self.digests = array("Q")  # one per block, in order, recorded by the first pass
        self.size: int | None = None  # bytes the scan read; later passes stop there
        self.mtime = 0
        self.sha256 = ""  # hex SHA-256 of the bytes the scan read

    def close(self) -> None:
        """Close the file (safe to call twice)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> CsvFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def records(self, delimiter: str | None) -> Iterator[Record]:
        """The file's records from the first line on; each line is one record when delimiter is None.

        Before the scan this reads (and records) blocks as they come, enough to look at the header; after
        it, every block is checked and the end raises FileChanged if the file changed since the scan began.
        """
        checked = self.size is not None
        lines = _Lines(self)
        yield from _parse(lines, delimiter)
        if checked:
            self._check_unchanged()

    def scan(
        self,
        delimiter: str | None,
        *,
        after: int,
        consequence: str,
        each: Callable[[int, list[str]], None] | None = None,
    ) -> int:
        """Read the whole file once; return how many non-blank records follow line `after` (the header).

        Raises SubscriberError naming the first problem line when a quote swallows lines or a line is not
        UTF-8 text; `consequence` ends the message ("nothing was sent"). With a delimiter, `each` gets (line,
        cells) of every non-blank record after `after` that reads as CSV, as the scan passes it (a record
        that spans lines is one the scan refuses at its end). Sets `sha256` from the bytes read.
        """
        self.mtime = os.fstat(self.fd).st_mtime_ns
        whole = hashlib.sha256()
        lines = _Lines(self, whole)
        if delimiter is None:  # one record a line: nothing can span lines
            count = sum(1 for r in _parse(lines, None) if r.first > after and not r.blank)
            spans: list[tuple[int, int, bool]] = []
            last: list[str] = []
        else:
            count, spans, last = _structure(lines, delimiter, after, each)
        problems = [(first, _quote_problem(first, end, limit, lines.number)) for first, end, limit in spans]
        spanned_to_end = bool(spans) and spans[-1][1] == lines.number
        if not spanned_to_end and any("\n" in cell for cell in last):  # a quote opened on the last line
            problems.append((lines.number, "a quoted field opens on this line and is never closed"))
        problems.extend(lines.fatal.items())
        self.size = lines.offset
        self.sha256 = whole.hexdigest()
        if problems:
            raise SubscriberError(_refusal(self.path, sorted(problems), consequence))
        return count

    def _check_unchanged(self) -> None:
        assert self.size is not None
        now = os.fstat(self.fd)
        if now.st_size != self.size or now.st_mtime_ns != self.mtime:
            grew = now.st_size - self.size
            how = f"{grew:,} bytes were added to it" if grew > 0 else "it changed"
            raise FileChanged(
                f"{self.path}: {how} while it was being read, after the check: run the same command again"
                " once the file is final"
            )
        try:
            named = os.stat(self.path)
        except OSError:
            named = None
        if named is None or (named.st_dev, named.st_ino) != (now.st_dev, now.st_ino):
            raise FileChanged(
                f"{self.path}: replaced by another file (or removed) while it was being read: run the same"
                " command again to read the new one"
            )

    def read_block(self, index: int) -> bytes:
        """Block `index` as the first pass saw it; FileChanged if it differs or is gone."""
        offset = index * BLOCK
        want = BLOCK if self.size is None else min(BLOCK, self.size - offset)
        if want <= 0:
            return b""
        data = _pread(self.fd, want, offset)
        digest = int.from_bytes(blake2b(data, digest_size=8).digest())
        if index < len(self.digests):
            if digest != self.digests[index] or (self.size is not None and len(data) < want):
                raise FileChanged(f"{self.path}: changed on disk")
        elif data:
            self.digests.append(digest)
        return data


def _pread(fd: int, size: int, offset: int) -> bytes:
    parts = []
    while size > 0:
        try:
            chunk = os.pread(fd, size, offset)
        except OSError as exc:
            raise SubscriberError(f"cannot read: {exc.strerror}") from None
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _quote_problem(first: int, last: int, past_limit: bool, lines: int) -> str:
    if past_limit:
        return (
            f"a quoted field opens on this line and is still open at line {last:,}, past the limit of"
            f" {FIELD_LIMIT:,} characters: an unbalanced quote swallows the lines after it"
        )
    end = " (the end of the file)" if last == lines else ""
    return (
        f"a quoted field opens on this line and runs to line {last:,}{end}: the {last - first:,} line(s)"
        " after it are read as part of one field (an unbalanced quote?)"
    )


def _refusal(path: Path, problems: list[tuple[int, str]], consequence: str) -> str:
    line, text = problems[0]
    more = ""
    if len(problems) > 1:
        others = [f"{n:,}" for n, _ in problems[1:_SHOWN]]
        rest = len(problems) - _SHOWN
        shown = ", ".join(others) + (f" and {rest:,} more" if rest > 0 else "")
        more = f" (also line(s) {shown})"
    return f"{path}:{line}: {text}{more}; {consequence}"


def _structure(
    lines: _Lines, delimiter: str, after: int, each: Callable[[int, list[str]], None] | None
) -> tuple[int, list[tuple[int, int, bool]], list[str]]:
    """The scan's own loop over the records, without making them (the check costs ~0.5 µs a row).

    Returns the non-blank records after line `after`, the (first, last, past the field limit) lines of each
    record that spans lines, and the last record's cells; hands each counted record to `each`.
    """
    reader = csv.reader(lines, delimiter=delimiter)
    count = 0
    spans: list[tuple[int, int, bool]] = []
    previous = 0
    cells: list[str] = []
    while True:
        try:
            for cells in reader:
                line = reader.line_num
                if line - previous > 1:
                    spans.append((previous + 1, line, False))
                if previous >= after and cells and (cells[0].strip() or any(c.strip() for c in cells)):
                    count += 1
                    if each is not None:
                        each(line, cells)
                previous = line
            return count, spans, cells
        except csv.Error as exc:
            line = reader.line_num
            if line - previous > 1:
                spans.append((previous + 1, line, "field limit" in str(exc)))
            elif previous >= after:
                count += 1  # a bad row, but a row
            previous = line
            cells = []


def _parse(lines: _Lines, delimiter: str | None) -> Iterator[Record]:
    if delimiter is None:
        for number, text in enumerate(lines, 1):
            yield Record(number, number, [text.rstrip("\r\n")], lines.problem(number, number))
        return
    reader = csv.reader(lines, delimiter=delimiter)
    previous = 0
    while True:
        cells: list[str] = []
        error = ""
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            error = f"cannot read this row as CSV: {exc}"
        first, previous = previous + 1, reader.line_num
        yield Record(first, previous, cells, lines.problem(first, previous) or error)


_LINE = re.compile(r"[^\n]*\n|[^\n]+\Z")


class _Lines:
    """Decoded physical lines for csv.reader, read a checked block at a time.

    Decoding and splitting happen a block at a time (in C); a block that is not UTF-8 is redone line by
    line to find the lines at fault. Remembers which lines were too long (a bad row) and which were not
    UTF-8 (`fatal`: the file was saved in another encoding, so the scan refuses it rather than drop every
    reader with an accented name). Assumes BLOCK <= MAX_LINE: only a line begun in an earlier block can
    be too long.
    """

    def __init__(self, source: CsvFile, whole: hashlib._Hash | None = None) -> None:
        self.source = source
        self.whole = whole  # updated with every block read
        self.number = 0  # lines handed out so far
        self.offset = 0  # bytes of the file read
        self.problems: dict[int, str] = {}
        self.fatal: dict[int, str] = {}
        self._lines = self._generate()

    def __iter__(self) -> Iterator[str]:
        return self._lines

    def _generate(self) -> Iterator[str]:
        first = self._block(0)
        if first.startswith(_UTF16_BOMS):
            yield from self._utf16(first)
            return
        carry = b""  # the start of a line whose end is in a later block
        skipping = False  # inside an overlong line: drop bytes up to its end
        index = 0
        while block := (first if index == 0 else self._block(index)):
            index += 1
            if skipping:
                end = block.find(b"\n") + 1
                if not end:
                    continue
                yield self._too_long()
                block, skipping = block[end:], False
            data = carry + block if carry else block
            cut = data.rfind(b"\n") + 1
            if not cut:
                carry, skipping = (b"", True) if len(data) > MAX_LINE else (data, False)
                continue
            if carry:
                head = data.find(b"\n") + 1
                if head > MAX_LINE:  # the line begun in an earlier block ends here, too long
                    yield self._too_long()
                    data, cut = data[head:], cut - head
            carry = data[cut:]
            yield from self._decoded(data[:cut])
        if skipping:
            yield self._too_long()
        elif carry:
            yield from self._decoded(carry)

    def _utf16(self, block: bytes) -> Iterator[str]:
        """The lines of a UTF-16 file (Excel's "Unicode text"), decoded as they come; the BOM says the order.

        Split after decoding, since a \\n byte of UTF-16 can belong to another character; a line is too long
        past MAX_LINE characters. Bytes that are not UTF-16 (a lone surrogate, an odd last byte) make the
        line they fall in fatal, as a line not UTF-8 does in a UTF-8 file.
        """
        decoder = codecs.getincrementaldecoder("utf-16")()
        carry = ""  # the start of a line whose end is in a later block
        skipping = False
        index = 1
        while True:
            final = not block
            text = self._decode_utf16(decoder, block, final, carry)
            block = b"" if final else self._block(index)
            index += 1
            if skipping:
                end = text.find("\n") + 1
                if not end and not final:
                    continue
                yield self._too_long()
                text, skipping = text[end:] if end else "", False
            data = carry + text
            cut = len(data) if final else data.rfind("\n") + 1
            carry = data[cut:]
            if len(carry) > MAX_LINE:
                carry, skipping = "", True
            for line in _LINE.findall(data[:cut]):
                if len(line) > MAX_LINE:
                    yield self._too_long()
                else:
                    self.number += 1
                    yield line
            if final:
                if skipping:
                    yield self._too_long()
                return

    def _decode_utf16(self, decoder: codecs.IncrementalDecoder, block: bytes, final: bool, carry: str) -> str:
        try:
            return decoder.decode(block, final)
        except UnicodeDecodeError as exc:
            decoder.errors = "replace"
            text = decoder.decode(block, final)
            bad = text.find("\ufffd")
            line = self.number + 1 + (carry + text[: max(bad, 0)]).count("\n")
            what = (
                "ends in the middle of a character"
                if final
                else f"has bytes that are not UTF-16 ({exc.reason})"
            )
            self.fatal.setdefault(line, f"the file is UTF-16 but this line {what}: save the file as UTF-8")
            return text

    def _decoded(self, chunk: bytes) -> Iterator[str]:
        if not self.number and chunk.startswith(_BOM):
            chunk = chunk[len(_BOM) :]
        try:
            lines = _LINE.findall(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            lines = [self._line(self.number + n, raw) for n, raw in enumerate(_RAW_LINE.findall(chunk), 1)]
        yield from lines
        self.number += len(lines)

    def _line(self, number: int, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.fatal.setdefault(
                number,
                f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}): save the file as UTF-8",
            )
            return raw.decode("utf-8", "replace")

    def _too_long(self) -> str:
        self.number += 1
        self.problems[self.number] = f"line {self.number} is longer than {MAX_LINE} bytes"
        return "\n"

    def _block(self, index: int) -> bytes:
        try:
            block = self.source.read_block(index)
        except FileChanged:
            raise FileChanged(
                f"{self.source.path}:{self.number + 1}: changed on disk while it was being read (edited or"
                " truncated); stopped before this line: run the same command again once the file is final"
            ) from None
        except SubscriberError as exc:
            raise SubscriberError(f"{self.source.path}: {exc}") from None
        self.offset += len(block)
        if self.whole is not None:
            self.whole.update(block)
        return block

    def problem(self, first: int, last: int) -> str:
        """Return (and forget) the first problem of lines first..last, "" if none."""
        if not (self.problems or self.fatal):
            return ""
        found = ""
        for number in range(first, last + 1):
            reason = self.problems.pop(number, "") or self.fatal.get(number, "")
            found = found or reason
        return found


_RAW_LINE = re.compile(rb"[^\n]*\n|[^\n]+\Z")
