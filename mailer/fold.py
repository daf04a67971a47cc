"""Fold a body part's over-long lines under RFC 5322's 998 octets, only where a newline changes nothing.

In HTML that is whitespace between attributes, after a `;` inside a style value, before a tag's `>`, or a
space in text outside <pre>; in plain text, a space. A part with a line that cannot be folded goes out
quoted-printable instead (the caller decides).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple


class Break(NamedTuple):
    """A place a line may be cut: at index `at`, dropping the space there or keeping the character."""

    at: int
    drops_space: bool

    @property
    def resume(self) -> int:
        """Where the next line starts."""
        return self.at + 1 if self.drops_space else self.at


def fold(content: str, *, html: bool, cost: Callable[[str], int], limit: int) -> str | None:
    """`content` with every line costing more than `limit` cut at its breaks; None if one cannot be."""
    out: list[str] = []
    in_pre = False
    for line in content.split("\n"):
        if cost(line) <= limit:
            out.append(line)
            in_pre = _pre_after(line, in_pre) if html else False
            continue
        if html:
            breaks, in_pre = html_breaks(line, in_pre)
        else:
            breaks = [Break(i, True) for i, ch in enumerate(line) if ch == " "]
        pieces = _cut(line, breaks, cost, limit)
        if pieces is None:
            return None
        out.extend(pieces)
    return "\n".join(out)


def html_breaks(line: str, in_pre: bool) -> tuple[list[Break], bool]:
    """The breaks of one line of HTML, and whether it ends inside <pre> (where text spaces are kept)."""
    breaks: list[Break] = []
    i = 0
    while i < len(line):
        if line[i] == "<":
            if line.startswith("<pre", i):
                in_pre = True
            elif line.startswith("</pre", i):
                in_pre = False
            i = _tag_breaks(line, i + 1, breaks)
            continue
        if line[i] == " " and not in_pre:
            breaks.append(Break(i, True))
        i += 1
    return breaks, in_pre


def _tag_breaks(line: str, i: int, breaks: list[Break]) -> int:
    """Add the breaks inside the tag whose name starts at `i`; return the index after its `>`."""
    quote = ""
    while i < len(line):
        ch = line[i]
        if quote:
            if ch == quote:
                quote = ""
            elif ch == " " and line[i - 1] == ";":  # between declarations of a style value
                breaks.append(Break(i, True))
        elif ch in "\"'":
            quote = ch
        elif ch == ">":
            breaks.append(Break(i, False))
            return i + 1
        elif ch == " ":
            breaks.append(Break(i, True))
        i += 1
    return i


def _cut(line: str, breaks: list[Break], cost: Callable[[str], int], limit: int) -> list[str] | None:
    """Cut at the last break that keeps each piece within `limit`; None when a piece cannot be kept so."""
    pieces: list[str] = []
    start = 0
    last: Break | None = None
    for brk in [*breaks, Break(len(line), False)]:
        if cost(line[start : brk.at]) > limit:
            if last is None:
                return None
            pieces.append(line[start : last.at])
            start = last.resume
            if cost(line[start : brk.at]) > limit:
                return None
        last = brk
    pieces.append(line[start:])
    return pieces


def _pre_after(line: str, in_pre: bool) -> bool:
    opened = line.rfind("<pre")
    closed = line.rfind("</pre")
    if opened == -1 and closed == -1:
        return in_pre
    return opened > closed
