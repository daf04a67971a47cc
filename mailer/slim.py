"""Drop inline CSS that changes nothing, so mailer's markup never makes Gmail clip an issue (~102 KB).

premailer copies every matching rule into every element: the 214-byte font stack alone sat on 64 elements
of the example. A declaration an element would inherit anyway is removed here; what the browser's own
stylesheet sets differently for a tag (link colour, heading sizes, bold <th>, monospace <code>) is kept.
Nothing counts as inherited from <body>, which Gmail and others replace with an element of their own.
Outlook on Windows, which does not inherit fonts into table cells, has its own rule in the template.
"""

from __future__ import annotations

import re
from functools import lru_cache

from lxml import etree

INHERITED = {
    "color", "font-family", "font-size", "font-style", "font-weight", "line-height", "letter-spacing",
    "text-align", "word-break", "overflow-wrap", "word-wrap",
}  # fmt: skip
# relative lengths (em, %) compound when repeated, so only absolute ones are "the same" as the parent's
_LENGTHS = {"font-size", "line-height", "letter-spacing"}
_ABSOLUTE = re.compile(r"\d+(?:\.\d+)?(?:px|pt)|0|normal")
# properties the browser's stylesheet sets on a tag: that tag does not inherit them from its parent
_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_MONO = ("pre", "code", "kbd", "samp", "tt")
_OWN: dict[str, set[str]] = {
    "color": {"a"},
    "font-family": {*_MONO},
    "font-size": {*_HEADINGS, *_MONO, "small", "big", "sub", "sup"},
    "font-weight": {*_HEADINGS, "b", "strong", "th"},
    "font-style": {"em", "i", "cite", "var", "dfn", "address"},
    "text-align": {"th", "center", "caption"},
    "white-space": {"pre"},
}
# what the browser's stylesheet already gives a tag, so saying it again inline changes nothing
_DEFAULTS: dict[str, dict[str, set[str]]] = {
    "font-weight": {tag: {"700", "bold"} for tag in (*_HEADINGS, "b", "strong", "th")},
    "text-decoration": {"a": {"underline"}},
}
# a cell's or row's valign/bgcolor attribute already says this (premailer adds them for Outlook); not
# align: align="center" is -webkit-center, which centres block children too
_ATTRIBUTES = {"vertical-align": "valign", "background-color": "bgcolor"}
_CELLS = ("td", "th", "tr", "thead", "tbody")
# a cell's align="left|right" (premailer adds it for Outlook) says what its text-align says, for a cell of
# inline content: 648 cells of a weekly carried both. Not center (see above), not with block children,
# which align="right" (-webkit-right) moves as well, not on <th>, which email.css aligns left by a rule that
# would beat the attribute wherever the rule applies.
_SIDES = {"left", "right"}
_BLOCKS = {
    "p",
    "div",
    "table",
    "ul",
    "ol",
    "dl",
    "blockquote",
    "pre",
    "hr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
}
# whitespace between these tags' children is never shown (tables, lists): one line break each, every cell
_NO_TEXT = {"table", "thead", "tbody", "tfoot", "tr", "ul", "ol"}
# in quirks mode (some webmail pages) a table starts these afresh instead of inheriting them
_TABLE_RESETS = {"font-size", "font-weight", "font-style", "line-height", "text-align"}
_CLASS = re.compile(r"\.(-?[_a-zA-Z][\w-]*)")
_DECLARATION = re.compile(r"""((?:[^;"'(]+|"[^"]*"|'[^']*'|\([^)]*\))+)""")  # runs, not a char at a time

_CLEAR = {"transparent", "none", "inherit", "initial", "unset", "rgba(0,0,0,0)"}


def declarations(style: str) -> list[tuple[str, str]]:
    """(property, value) pairs of a style attribute, in order; `;` inside quotes or url() does not split."""
    if '"' in style or "'" in style or "(" in style:
        parts = [match.group(1) for match in _DECLARATION.finditer(style)]
    else:  # most styles: the same runs between semicolons, without the regex's look at each character
        parts = style.split(";")
    out = []
    for part in parts:
        name, colon, value = part.partition(":")
        if colon and name.strip():
            out.append((name.strip().lower(), value.strip()))
    return out


def paints_itself(el: etree._Element) -> bool:
    """True if the element's inline style gives it a background of its own (a button, a badge, a box)."""
    style = el.get("style") or ""
    if "background" not in style.lower():  # most elements: no need to read the declarations
        return False
    for name, value in declarations(style):
        if name in ("background-color", "background") and value.lower().replace(" ", "") not in _CLEAR:
            return True
    return False


def slim_styles(root: etree._Element) -> None:
    """Remove inline declarations equal to the inherited value, top-down, in place."""
    _walk(root, {})


def _walk(el: etree._Element, inherited: dict[str, str | None]) -> None:
    tag = el.tag.lower() if isinstance(el.tag, str) else ""
    own = _own(tag)
    style = el.get("style")
    kept: list[tuple[str, str]] = []
    passed = dict(inherited)
    for name in own:
        passed[name] = None  # unknown: the tag's own default, not the parent's value
    if style is not None:
        for name, value in declarations(style):
            if value in _DEFAULTS.get(name, {}).get(tag, ()):
                passed[name] = value
                continue
            if tag in _CELLS and name in _ATTRIBUTES and _same_colour(el.get(_ATTRIBUTES[name]) or "", value):
                continue
            if name == "text-align" and _aligned(el, tag, value):
                passed[name] = value
                continue
            if name == "font-family":
                value = re.sub(r",\s+", ",", value)
            if name in INHERITED and "!important" not in value:
                same = inherited.get(name) == value and name not in own
                if name in _LENGTHS and not _ABSOLUTE.fullmatch(value):
                    same = False
                if same:
                    continue
                passed[name] = value
            kept.append((name, value))
        text = ";".join(f"{name}:{_short(value)}" for name, value in kept)
        if text:
            el.set("style", text)
        else:
            del el.attrib["style"]
    if tag == "body":
        passed = {}
    for child in el:
        if isinstance(child.tag, str):
            _walk(child, passed)


@lru_cache(maxsize=256)
def _own(tag: str) -> frozenset[str]:
    """The properties a tag does not inherit from its parent (the browser's stylesheet sets them)."""
    own = {name for name, tags in _OWN.items() if tag in tags}
    return frozenset(own | _TABLE_RESETS if tag == "table" else own)


def _aligned(el: etree._Element, tag: str, value: str) -> bool:
    """Whether a cell's align attribute already says its text-align `value`, for all it holds."""
    if tag != "td" or value not in _SIDES or (el.get("align") or "").lower() != value:
        return False
    return not any(isinstance(d.tag, str) and d.tag.lower() in _BLOCKS for d in el.iterdescendants())


def drop_layout_whitespace(root: etree._Element) -> None:
    """Remove the line breaks between rows, cells and list items, which no client shows; the HTML part's
    lines are folded under 998 octets afterwards anyway."""
    for el in root.iter(*_NO_TEXT):
        if el.text is not None and not el.text.strip():
            el.text = None
        for child in el:
            if child.tail is not None and not child.tail.strip():
                child.tail = None


def class_names(css: str) -> frozenset[str]:
    """The class names a style sheet's selectors use."""
    return frozenset(_CLASS.findall(re.sub(r"\d\.\d", "", css)))


def drop_unused_classes(root: etree._Element, keep: frozenset[str]) -> None:
    """Remove class names that neither `keep` nor a <style> rule left in the page uses: after inlining
    they are only bytes."""
    used = set(keep)
    for style in root.iter("style"):
        used.update(class_names(style.text or ""))
    for el in root.iter():
        classes = el.get("class") if isinstance(el.tag, str) else None
        if classes is None:
            continue
        kept = [name for name in classes.split() if name in used]
        if kept:
            el.set("class", " ".join(kept))
        else:
            del el.attrib["class"]


def _same_colour(attribute: str, value: str) -> bool:
    """Whether an attribute value says what a CSS value says (`#fff` is `#ffffff`)."""

    def full(text: str) -> str:
        text = text.strip().lower()
        return "#" + "".join(c * 2 for c in text[1:]) if re.fullmatch(r"#[0-9a-f]{3}", text) else text

    return bool(attribute) and full(attribute) == full(value)


def _short(value: str) -> str:
    """`0 0 16px 0` as `0 0 16px`: a four-side shorthand whose left side repeats the right one."""
    parts = value.split(" ")
    if len(parts) == 4 and parts[3] == parts[1] and "(" not in value:
        return " ".join(parts[:3])
    return value


def minify_css(css: str) -> str:
    """A <style> block without comments and the indentation premailer's serializer adds: its bytes count for
    Gmail too."""
    css = re.sub(r"\s+", " ", re.sub(r"/\*.*?\*/", "", css, flags=re.S))
    css = re.sub(r"\s*!\s*important", "!important", css)
    return re.sub(r"\s*([{};,>])\s*", r"\1", css).replace(";}", "}").strip()
