"""Lines of the plain-text part: display width (CJK counts two columns) and where a line may break."""

from __future__ import annotations

import re
import unicodedata

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
_CLOSING = set("，。、；：？！）」』》】〉〕”’,.;:?!)]}…%")
_OPENING = set("（「『《【〈〔“‘([{")


def is_cjk(char: str) -> bool:
    """True for CJK ideographs, kana, hangul and full-width punctuation."""
    return _CJK_CHAR.match(char) is not None


def char_width(char: str) -> int:
    """Columns a character takes in a monospace terminal or mail reader."""
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def text_width(text: str) -> int:
    """Columns a string takes."""
    if text.isascii():
        return len(text)
    return sum(char_width(c) for c in text)


def _atoms(text: str) -> list[str]:
    """Split text into unbreakable pieces: words and URLs whole, CJK one character at a time."""
    atoms: list[str] = []
    for piece in re.findall(r"\s+|[^\s]+", text):
        if piece.isspace():
            atoms.append(" ")
            continue
        if not _CJK_CHAR.search(piece):  # a plain word or URL: one atom
            atoms.append(piece)
            continue
        word = ""
        for ch in piece:
            if is_cjk(ch) and ch not in _CLOSING:
                if word and word[-1] not in _OPENING:
                    atoms.append(word)
                    word = ""
                word += ch
            elif ch in _CLOSING or not word or not is_cjk(word[-1]) or word[-1] in _OPENING:
                word += ch
            else:
                atoms.append(word)
                word = ch
        if word:
            atoms.append(word)
    return atoms


def wrap(text: str, width: int = WIDTH, indent: str = "", first: str | None = None) -> list[str]:
    """Wrap text by display width, breaking at spaces or between CJK characters, never inside a URL."""
    lines: list[str] = []
    prefix = indent if first is None else first
    line, used = prefix, text_width(prefix)
    for atom in _atoms(text):
        w = text_width(atom)
        if atom == " ":
            if used > text_width(prefix):
                line, used = line + " ", used + 1
            continue
        if used + w > width and line.strip() and line != prefix:
            lines.append(line.rstrip())
            prefix = indent
            line, used = prefix, text_width(prefix)
        line, used = line + atom, used + w
    if line.strip():
        lines.append(line.rstrip())
    return lines
