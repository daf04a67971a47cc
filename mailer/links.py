"""Links look like links: a colour a post sets inside a link gives way to the link's own.

Posts pasted from WeChat and other editors wrap a link's text in `<strong style="color:#111827">`: the
inner colour beat the link's, and the link read as black bold text. Inside a link that is not a button (no
background of its own), every colour and text decoration set on an element goes, so the link's colour and
underline show, in light mode here and in dark mode by the `.body-cell a *` rule of email-media.css. A box
with a background of its own inside a link (a tag, a badge) keeps its colours, and so does its text.
"""

from __future__ import annotations

from lxml import etree

from .slim import declarations, paints_itself

_GIVES_WAY = {"color", "text-decoration", "text-decoration-line", "text-decoration-color"}


def links_look_like_links(root: etree._Element) -> None:
    """Drop the colours and text decorations set inside each link that has no background, in place."""
    for link in root.iter("a"):
        if link.get("href") and not paints_itself(link):
            _give_way(link)


def _give_way(link: etree._Element) -> None:
    stack = [child for child in link if isinstance(child.tag, str)]
    while stack:
        el = stack.pop()
        if paints_itself(el):  # a badge inside the link: its own colours, on its own background
            continue
        style = el.get("style")
        if style is not None:
            kept = [(n, v) for n, v in declarations(style) if n not in _GIVES_WAY]
            if kept:
                el.set("style", ";".join(f"{n}:{v}" for n, v in kept))
            else:
                del el.attrib["style"]
        stack.extend(child for child in el if isinstance(child.tag, str))
