"""Lines of the plain-text part: display width, and where a line may break (UAX #14, with kinsoku).

Latin words and URLs are never broken; CJK text may break between any two characters, but never before
closing punctuation (，。、）」 and the like) nor after opening punctuation (（「“), as kinsoku shori and
Unicode's line-breaking rules (UAX #14: classes CL, CP, EX, IS, NS, IN and OP, QU) have it.

The text part is sent format=flowed; delsp=yes (RFC 3676): a wrapped paragraph's line ends in a space that
says "this line goes on". Apple Mail, Thunderbird, mutt and K-9/FairEmail join such lines and wrap the
paragraph to the screen, so a phone does not cut every 76-column line into a long and a short one (the
jagged pairs); delsp=yes has them drop that space again, so Chinese text joins without one. Clients without
format=flowed show the lines as they are, at most 76 columns wide.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from functools import lru_cache

WIDTH = 76
_CJK_RANGES = (
    (0x2E80, 0x2FDF),  # radicals
    (0x3000, 0x303F),  # CJK symbols and punctuation
    (0x3040, 0x30FF),  # kana
    (0x3100, 0x31FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7AF),  # hangul
    (0xF900, 0xFAFF),
    (0xFF00, 0xFFEF),  # full-width forms
    (0x20000, 0x3FFFF),
)
_CJK_CHAR = re.compile("[" + "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in _CJK_RANGES) + "]")
# no line starts with these (UAX #14 CL, CP, EX, IS, NS, IN, PO; closing brackets and quotes by category)
_CLOSING = frozenset(
    "，。、；：？！…‥・ー々〻ゝゞヽヾ〜～％‰℃°¢,.;:?!%)]}"
    "ぁぃぅぇぉっゃゅょゎゕゖァィゥェォッャュョヮヵヶㇰㇱㇲㇳㇴㇵㇶㇷㇸㇹㇺㇻㇼㇽㇾㇿ"
)
_OPENING = frozenset("([{$£¥￥＄€")  # no line ends with these (OP, PR; and Ps, Pi by category)
_DASHES = frozenset("—―")  # a "——" pair stays together (UAX #14 B2 × B2)
_FLOW = " "  # RFC 3676: a line that ends in a space goes on in the next one
_SPACE_RUN = re.compile(r"\s+")


def is_cjk(char: str) -> bool:
    """True for CJK ideographs, kana, hangul and full-width punctuation."""
    return _CJK_CHAR.match(char) is not None


def char_width(char: str) -> int:
    """Columns a character takes in a monospace terminal or mail reader: East Asian wide ones two, combining
    marks and format characters none."""
    if unicodedata.east_asian_width(char) in "WF":
        return 2
    return 0 if unicodedata.category(char) in ("Mn", "Me", "Cf") else 1


def text_width(text: str) -> int:
    """Columns a string takes."""
    if text.isascii():
        return len(text)
    return sum(char_width(c) for c in text)


def closes(char: str) -> bool:
    """No line may start with this character (closing punctuation, small kana, iteration marks)."""
    return char in _CLOSING or unicodedata.category(char) in ("Pe", "Pf")


def opens(char: str) -> bool:
    """No line may end with this character (opening punctuation, currency signs before a number)."""
    return char in _OPENING or unicodedata.category(char) in ("Ps", "Pi")


@lru_cache(maxsize=4096)
def _char(char: str) -> tuple[int, bool, bool]:
    """A character's width, whether no line may start with it, whether no line may end with it (the
    wrapper asks for every character of a CJK text; unicodedata lookups per pair were half of its time)."""
    return char_width(char), closes(char), opens(char)


def _pieces(text: str) -> Iterator[tuple[str, bool, int]]:
    """The unbreakable pieces of a text, each with whether a space stood before it and its width."""
    spaced = False
    for word in _SPACE_RUN.split(text):
        if not word:
            spaced = True
            continue
        if word.isascii():  # no wide character, so no break inside
            yield word, spaced, len(word)
            spaced = True
            continue
        start = used = 0
        before, (width, _, opening) = word[0], _char(word[0])
        for i in range(1, len(word)):
            after = word[i]
            after_width, closing, after_opening = _char(after)
            # a break next to a wide character, unless it would start a line with closing punctuation, end
            # one with opening punctuation, or split a "——"
            if (
                (width == 2 or after_width == 2)
                and not closing
                and not opening
                and not (before in _DASHES and after in _DASHES)
            ):
                yield word[start:i], spaced, used + width
                start, used, spaced = i, 0, False
            else:
                used += width
            before, width, opening = after, after_width, after_opening
        yield word[start:], spaced, used + width
        spaced = True


def wrap(
    text: str, width: int = WIDTH, indent: str = "", first: str | None = None, *, flowed: bool = False
) -> list[str]:
    """Wrap text by display width at spaces and between CJK characters (never inside a URL or word).

    `flowed`: every line but the last ends in a space (format=flowed; a space the text had at the break
    stays before it), counted within `width`. Only for lines without a hanging indent: a reader that joins
    them would keep the indent as spaces inside the paragraph.
    """
    lines: list[str] = []
    parts: list[str] = [indent if first is None else first]  # the line so far, joined when it is full
    used, empty = text_width(parts[0]), True
    room = width - (2 if flowed else 0)  # a flowed line may end in the text's space and the flow mark
    for piece, spaced, w in _pieces(text):
        gap = " " if spaced and not empty else ""
        if not empty and used + len(gap) + w > room:
            lines.append("".join(parts) + (gap + _FLOW if flowed else ""))
            parts, used, gap = [indent], text_width(indent), ""
        parts += (gap, piece)
        used, empty = used + len(gap) + w, False
    if not empty:
        lines.append("".join(parts))
    return lines


def flowed_part(text: str) -> str:
    """A text part as format=flowed sends it: lines of spaces emptied (they would flow into the next), and
    lines that start with "From " space-stuffed (RFC 3676 4.4; a reader drops that first space again)."""
    lines = []
    for line in text.split("\n"):
        if not line.strip():
            line = ""
        elif line.startswith("From "):
            line = " " + line
        lines.append(line)
    return "\n".join(lines)
