"""Dark mode: what has a background of its own keeps its own colours.

The dark-mode rules (email-media.css) repaint the page, the text and every link with `!important`. A box
the post paints itself (a "join" button, a tinted promo, an embed chip) keeps its light background in dark
mode, so the repainted text on it became unreadable: light blue on the Telegram button, 1.67:1. Such a box
and the text in it get their light colours as inline `!important` declarations, which the rules cannot
override. Boxes a dark rule repaints (the summary, code, table headers, the Telegram card) are left to it.
"""

from __future__ import annotations

import re

from lxml import etree
from lxml.cssselect import CSSSelector, SelectorError

from .slim import declarations, paints_itself

_DARK = re.compile(r"@media[^{]*prefers-color-scheme:\s*dark[^{]*\{((?:[^{}]*\{[^{}]*\})*)[^{}]*\}")
_RULE = re.compile(r"([^{}]+)\{([^{}]*)\}")


def keep_own_colours(root: etree._Element) -> None:
    """Pin the light colours of every self-painted box the dark rules do not repaint, and of its text."""
    css = "".join(style.text or "" for style in root.iter("style"))
    repainted = _repainted(root, css)
    body = root.find(".//body")
    for el in (body if body is not None else root).iter():
        if isinstance(el.tag, str) and el not in repainted and paints_itself(el):
            if not any(_pinned(a) for a in el.iterancestors()):
                _pin(el, repainted)


def _repainted(root: etree._Element, css: str) -> set[etree._Element]:
    """Elements a dark-mode rule gives a background of its own (and whatever it matches in the page)."""
    found: set[etree._Element] = set()
    for block in _DARK.findall(css):
        for selectors, body in _RULE.findall(block):
            if "background" not in body:
                continue
            for selector in selectors.split(","):
                try:
                    found.update(CSSSelector(selector.strip())(root))
                except (SelectorError, SyntaxError):  # a selector lxml cannot evaluate: nothing pinned for it
                    continue
    return found


def _pinned(el: etree._Element) -> bool:
    return "!important" in (el.get("style") or "") and "color:" in (el.get("style") or "")


def _pin(box: etree._Element, repainted: set[etree._Element]) -> None:
    """Give the box and each element in it its light colour, `!important`, skipping repainted parts."""
    stack = [box]
    while stack:
        el = stack.pop()
        colour = _light_colour(el)
        if colour:
            kept = [(n, v) for n, v in declarations(el.get("style") or "") if n != "color"]
            el.set("style", ";".join(f"{n}:{v}" for n, v in [*kept, ("color", f"{colour} !important")]))
        stack.extend(child for child in el if isinstance(child.tag, str) and child not in repainted)


def _light_colour(el: etree._Element) -> str:
    """The colour the element has in light mode: its own inline colour or the nearest ancestor's."""
    for node in (el, *el.iterancestors()):
        for name, value in declarations(node.get("style") or ""):
            if name == "color":
                return value.replace("!important", "").strip()
    return ""
