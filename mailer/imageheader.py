"""The pixel size of a PNG, JPEG, GIF, WebP or SVG image from its first bytes, read as they arrive.

Written here rather than taken from a library (Pillow, imagesize) because the fetch needs three answers a
library does not give apart: the size, "not yet: read more" (so it stops reading the moment the size is
known, and never downloads the picture), and "never: this is not an image, or a corrupt one" with the
reason `mailer check` shows. A size no real image has (100000x100000, a decompression bomb's header) is
refused too: the image is then treated as one of unknown size.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

MAX_SIDE = 30_000  # px; more than any picture a newsletter shows
MAX_PIXELS = 100_000_000  # Pillow calls ~89 megapixels a decompression bomb


class NotAnImage(ValueError):
    """The bytes are not an image mailer can size, or claim a size no real image has."""


@dataclass(frozen=True)
class Size:
    """An image's natural size in CSS pixels, as a browser shows it (EXIF rotation applied)."""

    width: int
    height: int


def read_size(data: bytes) -> Size | None:
    """The size, or None when more bytes are needed; NotAnImage when no more bytes can help."""
    if len(data) < 12:
        if _could_start(data):
            return None
        raise NotAnImage(_UNKNOWN_KIND)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        size = _png(data)
    elif data.startswith((b"GIF87a", b"GIF89a")):
        size = Size(*struct.unpack("<HH", data[6:10]))
    elif data.startswith(b"\xff\xd8"):
        size = _jpeg(data)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        size = _webp(data)
    else:
        size = _svg(data)
    return None if size is None else _plausible(size)


_UNKNOWN_KIND = "not a PNG, JPEG, GIF, WebP or SVG image"
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"\xff\xd8", b"RIFF")


def _could_start(data: bytes) -> bool:
    text = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    return any(m.startswith(data[: len(m)]) for m in _MAGIC) or not text or text.startswith(b"<")


def _plausible(size: Size) -> Size:
    w, h = size.width, size.height
    if w <= 0 or h <= 0:
        raise NotAnImage(f"a corrupt header: it says {w}x{h} px")
    if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
        raise NotAnImage(f"claims {w}x{h} px, more than any real image")
    return size


def _png(data: bytes) -> Size | None:
    if len(data) < 24:
        return None
    length, kind = struct.unpack(">I4s", data[8:16])
    if kind != b"IHDR" or length != 13:
        raise NotAnImage("a corrupt PNG: its first chunk is not a valid IHDR")
    return Size(*struct.unpack(">II", data[16:24]))


# Start-of-frame markers (the ones that carry the size): C0-CF but not C4 (DHT), C8 (JPG), CC (DAC)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # markers without a length


def _jpeg(data: bytes) -> Size | None:
    pos, rotated = 2, False
    while True:
        while pos < len(data) and data[pos] == 0xFF and pos + 1 < len(data) and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 4 > len(data):
            return None
        if data[pos] != 0xFF:
            raise NotAnImage("a corrupt JPEG: a segment does not start with a marker")
        marker = data[pos + 1]
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: the frame header should have come first
            raise NotAnImage("a corrupt JPEG: no frame header before the image data")
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            raise NotAnImage("a corrupt JPEG: a segment of impossible length")
        end = pos + 2 + length
        if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\0\0":
            if end > len(data):
                return None
            rotated = _exif_rotated(data[pos + 10 : end])
        elif marker in _SOF:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return Size(height, width) if rotated else Size(width, height)
        pos = end


def _exif_rotated(tiff: bytes) -> bool:
    """Whether the EXIF orientation turns the picture a quarter (5-8): browsers show it that way."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return False
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return False
    (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    for i in range(count):
        entry = tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        if len(entry) < 12:
            return False
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag == 0x0112 and kind == 3:  # Orientation, a SHORT
            return struct.unpack(order + "H", entry[8:10])[0] in (5, 6, 7, 8)
    return False


def _webp(data: bytes) -> Size | None:
    kind = data[12:16]
    if len(data) < {b"VP8L": 25}.get(kind, 30):
        return None
    if kind == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise NotAnImage("a corrupt WebP: no VP8 start code")
        width, height = struct.unpack("<HH", data[26:30])
        return Size(width & 0x3FFF, height & 0x3FFF)
    if kind == b"VP8L":
        if data[20] != 0x2F:
            raise NotAnImage("a corrupt WebP: no VP8L signature")
        (bits,) = struct.unpack("<I", data[21:25])
        return Size((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if kind == b"VP8X":
        return Size(int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1)
    raise NotAnImage("a WebP of a kind mailer does not know")


_SVG_TAG = re.compile(rb"<svg\b([^>]*)>", re.I)
_ATTR = re.compile(rb"""([\w:-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_LENGTH = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?\d+)?)\s*(px|pt|pc|in|cm|mm)?\s*")
_UNIT = {None: 1.0, "px": 1.0, "pt": 4 / 3, "pc": 16.0, "in": 96.0, "cm": 96 / 2.54, "mm": 96 / 25.4}
_PROLOG = rb"<\?xml[^>]*>|<!--.*?-->|<!DOCTYPE\s+svg[^>]*>"  # what may come before <svg
_SVG_PREFIX = re.compile(rb"\s*(?:(?:" + _PROLOG + rb")\s*)*<svg\b", re.I | re.S)


def _svg(data: bytes) -> Size | None:
    start = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not start.startswith(b"<"):
        raise NotAnImage(_UNKNOWN_KIND)
    tag = _SVG_TAG.search(data)
    if tag is None:
        if re.match(rb"(?:<!doctype\s+html|<html|<head|<body)", start, re.I):
            raise NotAnImage("an HTML page, not an image")
        return None  # a long XML prolog or comment: read on
    if not _SVG_PREFIX.match(start):
        raise NotAnImage("not an SVG image: something else comes before <svg>")
    attrs = {
        m.group(1).decode("ascii").lower(): (m.group(2) or m.group(3) or b"").decode("utf-8", "replace")
        for m in _ATTR.finditer(tag.group(1))
    }
    width, height = _length(attrs.get("width")), _length(attrs.get("height"))
    box = [float(v) for v in re.split(r"[\s,]+", attrs.get("viewbox", "").strip()) if _is_number(v)]
    if len(box) == 4 and box[2] > 0 and box[3] > 0:
        ratio = box[3] / box[2]
        if width is None and height is None:
            width, height = box[2], box[3]
        elif height is None and width is not None:
            height = width * ratio
        elif width is None and height is not None:
            width = height / ratio
    if width is None or height is None:
        raise NotAnImage("an SVG without a size in pixels (no width/height, or in %, no viewBox)")
    return Size(round(width), round(height))


def _is_number(text: str) -> bool:
    return re.fullmatch(r"-?[0-9]*\.?[0-9]+(?:[eE][+-]?\d+)?", text) is not None


def _length(value: str | None) -> float | None:
    match = _LENGTH.fullmatch(value or "")
    return float(match.group(1)) * _UNIT[match.group(2)] if match else None
