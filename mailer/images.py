"""Give every image of the email its width and height, at its natural size but never wider than the column.

Outlook on Windows lays an image out by its width/height attributes alone (no max-width), and without
them at the picture's full size: a 1200 px photo breaks the layout, and a badge blown up to the column
looks broken everywhere. So each image gets both attributes: the post's own size (attributes or a px style)
when it gives one, else the natural size (mailer.imagefetch), scaled to the column when wider, keeping
the aspect ratio. An image whose size cannot be known keeps what it has (max-width: 100% in email.css), and
the report says why, for `mailer check`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from lxml import etree

from .imagefetch import Lookup
from .slim import declarations

COLUMN = 552  # px: the body column of email.html (600 minus 24 px padding each side)
BODY_CELL = "body-cell"  # the template's cell that holds the post: its images are held to the column


@dataclass
class ImageReport:
    """What fitting the images found: how many were sized, which were not and why."""

    sized: int = 0
    unknown: dict[str, str] = field(default_factory=dict)  # src -> why its size is not known
    cache_problem: str = ""


def pixels(value: str | None) -> int | None:
    """A length in whole CSS pixels ("300", "300px"), or None for anything else ("100%", "auto", "")."""
    match = re.fullmatch(r"\s*(\d{1,5})(?:\.\d*)?\s*(?:px)?\s*", value or "")
    return int(match.group(1)) if match and int(match.group(1)) > 0 else None


def fit_images(root: etree._Element, look_up: Callable[[Iterable[str]], Lookup]) -> ImageReport:
    """Set width and height on every <img> under root; `look_up` gives the natural sizes still needed."""
    cells = [td for td in root.iter("td") if BODY_CELL in (td.get("class") or "").split()]
    in_body = {img for cell in cells for img in cell.iter("img")}  # held, so lxml hands out the same proxies
    wanted: list[tuple[etree._Element, int | None, int | None, int | None]] = []
    report = ImageReport()
    for img in root.iter("img"):
        bound = COLUMN if img in in_body else None
        if bound:  # "100%", "auto" in the post: not a size an email client can rely on
            for name in ("width", "height"):
                if name in img.attrib and pixels(img.get(name)) is None:
                    del img.attrib[name]
        width, height = _own_size(img)
        if width and height:
            _set(img, width, height, bound)
            report.sized += 1
        else:
            wanted.append((img, width, height, bound))
    if not wanted:
        return report
    found = look_up(img.get("src") or "" for img, *_ in wanted)
    report.cache_problem = found.cache_problem
    for img, width, height, bound in wanted:
        src = img.get("src") or ""
        natural = found.sizes.get(src)
        if natural is None:
            report.unknown[src] = found.unknown.get(src, "no size known")
            if width and bound:  # the post's own width, held to the column; the height stays as it was
                _set(img, width, None, bound)
            continue
        if width:
            height = round(width * natural.height / natural.width)
        elif height:
            width = round(height * natural.width / natural.height)
        else:
            width, height = natural.width, natural.height
        _set(img, width or 1, height or 1, bound)
        report.sized += 1
    return report


def _own_size(img: etree._Element) -> tuple[int | None, int | None]:
    """The size the post or template gave the image, in px: a px style (what browsers go by) before the
    attributes."""
    width, height = pixels(img.get("width")), pixels(img.get("height"))
    for name, value in declarations(img.get("style") or ""):
        if name == "width" and (px := _css_pixels(value)):
            width = px
        elif name == "height" and (px := _css_pixels(value)):
            height = px
    return width, height


def _css_pixels(value: str) -> int | None:
    match = re.fullmatch(r"(\d{1,5})(?:\.\d*)?px", value.strip().lower())
    return int(match.group(1)) if match and int(match.group(1)) > 0 else None


def _set(img: etree._Element, width: int, height: int | None, bound: int | None) -> None:
    """Set the attributes, the size held to `bound`. In the post's images a px width style says the same,
    a picture as wide as the column gets width: 100% (a phone column a little wider than 552 px is filled),
    and height is auto, so a narrow screen shrinks the picture evenly (a px height squashed it)."""
    full = bound is not None and width >= bound
    if bound and width > bound:
        height = None if height is None else max(1, round(height * bound / width))
        width = bound
    img.set("width", str(width))
    if height is not None:
        img.set("height", str(height))
    if bound is None:
        return
    declared = declarations(img.get("style") or "")
    now = {"width": f"{width}px", "height": "auto"}
    kept = [
        (n, now[n] if n in now and _css_pixels(v) else v) for n, v in declared if not (full and n == "width")
    ]
    if full:
        kept.append(("width", "100%"))
    if height is not None and not any(n == "height" for n, _ in kept):
        kept.append(("height", "auto"))
    if kept != declared:
        img.set("style", ";".join(f"{n}:{v}" for n, v in kept))
