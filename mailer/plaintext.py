"""The plain-text part of a post: markdown-it's token tree rendered as text to read, not a tag-strip of HTML.

Each kind of block has its own method of `_TextRenderer`; where a block sits (inside which quotes and lists)
travels down the tree as a `_Place`. Blocks are `Block` values, joined by `join_blocks`: a blank line between
blocks, none between the items of one list.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lxml import html as lhtml
from markdown_it.token import Token

from .linebreak import WIDTH, text_width, wrap

RULE = "-" * 24  # a thematic break, and the line above the notes and links at the end
_UNDERLINES = "=-~"  # headings of levels 1-3 are underlined; smaller ones stand on their own line


@dataclass(frozen=True)
class Block:
    """Lines of text that stand apart from their neighbours by a blank line, unless both are list items."""

    text: str
    item: bool = False  # a list item's paragraph: sits on the line under the item before it


def join_blocks(blocks: Sequence[Block]) -> str:
    """One text: empty blocks dropped, a blank line between blocks, a newline between list items."""
    out: list[str] = []
    previous: Block | None = None
    for block in blocks:
        if not block.text.strip(" \n"):
            continue
        if previous is not None:
            out.append("\n" if block.item and previous.item else "\n\n")
        out.append(block.text)
        previous = block
    return "".join(out)


class References:
    """Links' URLs, numbered after the footnotes and listed at the end.

    A URL in the middle of a sentence (a Chinese one above all) breaks it up: the text says `label[n]`.
    """

    def __init__(self, notes: int) -> None:
        self.notes = notes
        self.urls: list[str] = []

    def cite(self, url: str) -> int:
        """The number a link to `url` shows after its text."""
        self.urls.append(url)
        return self.notes + len(self.urls)

    def blocks(self) -> list[Block]:
        """The numbered URLs, under a rule unless the footnotes drew one already."""
        if not self.urls:
            return []
        listing = Block("\n".join(f"[{n}] {url}" for n, url in enumerate(self.urls, self.notes + 1)))
        return [listing] if self.notes else [Block(RULE), listing]


_RAW_LINK = re.compile(r"""<a\s(?:[^>"']|"[^"]*"|'[^']*')*?\bhref\s*=\s*("[^"]*"|'[^']*'|[^\s>]+)""", re.I)
_RAW_EMBED = re.compile(r"<(?:iframe|embed|object|video|audio)\b", re.I)
_CITED = re.compile(r"(?:https?://|mailto:)", re.I)  # what sanitize keeps of a raw link's href


def inline_text(tokens: Sequence[Token] | None, refs: References, clean: Callable[[str], str]) -> str:
    """Flatten inline tokens: links (markdown or raw `<a href>`) as `text[n]` with the URL cited in `refs`,
    images as `[alt]`, a raw embed as the link `clean` (the sanitiser) makes of it, markup dropped."""
    out: list[str] = []
    links: list[tuple[str, int]] = []  # open links: href and where their text starts in `out`
    for tok in tokens or ():
        kind = tok.type
        if kind == "html_inline":
            kind, href = _raw_inline(tok.content)
        else:
            href = str(tok.attrGet("href") or "") if kind == "link_open" else ""
        if kind in ("text", "code_inline"):
            out.append(tok.content)
        elif kind == "softbreak":
            out.append(" ")
        elif kind == "hardbreak":
            out.append("\n")
        elif kind == "link_open":
            links.append((href, len(out)))
        elif kind == "link_close" and links:
            href, start = links.pop()
            label = "".join(out[start:]).strip()
            if href and href != label and not href.startswith("#"):
                out.append(f"[{refs.cite(href)}]" if label else href)
        elif kind == "footnote_ref":
            out.append(f"[{int(tok.meta['id']) + 1}]")
        elif kind == "image":
            out.append(f"[{tok.content or 'image'}]")
        elif kind == "embed":
            out.append(f" {html_text(clean(tok.content), refs)} ")
    return "".join(out)


def _raw_inline(tag: str) -> tuple[str, str]:
    """What a tag of raw HTML inside a paragraph means for the text: a line break, a link opening (with its
    URL if sanitize keeps it) or closing, an embed, or nothing."""
    lower = tag.lower()
    if lower.startswith("<br"):
        return "hardbreak", ""
    if lower.startswith("</a"):
        return "link_close", ""
    link = _RAW_LINK.match(tag)
    if link:
        href = html.unescape(link.group(1).strip("\"'")).strip()
        return "link_open", href if _CITED.match(href) else ""
    return ("embed", "") if _RAW_EMBED.match(tag) else ("", "")


_BLOCKS = ("p", "div", "li", "tr", "h1", "h2", "h3", "h4", "br", "blockquote")  # each ends a line


def html_text(clean_html: str, refs: References) -> str:
    """Plain text of sanitised raw HTML: block elements on their own lines, links as `text[n]` with the URL
    cited in `refs` (as markdown links are: not `(https://...)` in the middle of a sentence), images as
    `[alt]`."""
    if not clean_html.strip():
        return ""
    root = lhtml.fragment_fromstring(clean_html, create_parent="div")
    for link in root.iter("a"):
        href = (link.get("href") or "").strip()
        label = link.text_content().strip()
        if _CITED.match(href) and href != label:
            link.tail = (f"[{refs.cite(href)}]" if label else href) + (link.tail or "")
    for img in root.iter("img"):
        if img.get("alt"):
            img.tail = f"[{img.get('alt')}]" + (img.tail or "")
    for el in root.iter(*_BLOCKS):
        el.tail = "\n" + (el.tail or "")
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in root.text_content().split("\n"))
    return "\n".join(line for line in lines if line)


@dataclass
class _Node:
    """A block token and, for an opening token, the block tokens up to its closing one."""

    token: Token
    children: list[_Node] = field(default_factory=list)

    @property
    def type(self) -> str:
        return self.token.type.removesuffix("_open")


def _tree(tokens: Sequence[Token]) -> _Node:
    """The block tokens as a tree (markdown-it's SyntaxTreeNode also makes a node of every inline token: four
    times slower). A closing token without an opening one is skipped: a footnote defined inside another one
    makes the footnote plugin drop the inner opening tokens but keep their closing ones."""
    root = _Node(Token("root", "", 0))
    path = [root]
    for tok in tokens:
        if tok.nesting == -1:
            if len(path) > 1:
                path.pop()
            continue
        node = _Node(tok)
        path[-1].children.append(node)
        if tok.nesting == 1:
            path.append(node)
    return root


@dataclass(frozen=True)
class _Place:
    """Where a block sits: inside how many quotes and lists, and the marker of the innermost list item."""

    quotes: int = 0
    lists: int = 0
    marker: str = ""  # "- " or "3. "

    @property
    def prefix(self) -> str:
        return "> " * self.quotes

    @property
    def pad(self) -> str:
        """The indent of a list item's text, after the quote marks."""
        return self.prefix + "   " * self.lists


class _TextRenderer:
    """Renders the block tree; a paragraph takes the marker of the list item it opens, or a note's number."""

    def __init__(self, clean: Callable[[str], str], refs: References) -> None:
        self.clean = clean
        self.refs = refs
        self.item_opened = False  # a list item opened and no paragraph has taken its marker yet
        self.note: str | None = None  # "[2] ": the footnote whose text comes next
        self.rules: dict[str, Callable[[_Node, _Place], list[Block]]] = {
            "paragraph": self.paragraph,
            "heading": self.heading,
            "bullet_list": self.list_block,
            "ordered_list": self.list_block,
            "list_item": self.list_item,
            "blockquote": self.blockquote,
            "fence": self.code,
            "code_block": self.code,
            "hr": self.rule,
            "footnote_block": self.footnote_block,
            "footnote": self.footnote,
            "html_block": self.html_block,
            "table": self.table,
        }

    def render(self, node: _Node, place: _Place) -> list[Block]:
        rule = self.rules.get(node.type)
        return rule(node, place) if rule else self.children(node, place)

    def children(self, node: _Node, place: _Place) -> list[Block]:
        return [block for child in node.children for block in self.render(child, place)]

    def inline(self, node: _Node) -> str:
        """The text of a paragraph, heading or cell: the inline node among its children."""
        inline = next((child for child in node.children if child.type == "inline"), None)
        return inline_text(inline.token.children if inline else None, self.refs, self.clean).strip()

    def paragraph(self, node: _Node, place: _Place) -> list[Block]:
        text = self.inline(node)
        if self.note:
            return [self.noted(text)]
        if not place.lists:  # no hanging indent: lines a format=flowed reader may join
            return [Block(_wrap_lines(text, place.pad, flowed=True))]
        if not self.item_opened:
            return [Block(_wrap_lines(text, place.pad), item=True)]
        self.item_opened = False
        hanging = place.prefix + "   " * (place.lists - 1)
        lines = _wrap_lines(text, hanging + " " * len(place.marker), first=hanging + place.marker)
        return [Block(lines, item=True)]

    def noted(self, text: str) -> Block:
        """The first paragraph of a footnote, after its number."""
        note, self.note = self.note or "", None
        return Block("\n".join(wrap(text, indent=" " * len(note), first=note)))

    def heading(self, node: _Node, place: _Place) -> list[Block]:
        text = self.inline(node)
        if self.note:
            return [self.noted(text)]
        lines = [text]
        level = int(node.token.tag[1])
        if level <= len(_UNDERLINES):
            lines.append(_UNDERLINES[level - 1] * min(text_width(text), WIDTH))
        return [Block("\n".join(place.prefix + line for line in lines))]

    def list_block(self, node: _Node, place: _Place) -> list[Block]:
        ordered = node.type == "ordered_list"
        start = int(str(node.token.attrGet("start") or 1)) if ordered else 1
        blocks: list[Block] = []
        for n, item in enumerate(node.children, start):
            self.item_opened = True
            marker = f"{n}. " if ordered else "- "
            blocks += self.render(item, _Place(place.quotes, place.lists + 1, marker))
        if place.lists:
            return blocks
        return [Block(join_blocks(blocks))]  # the outermost list is one block: a blank line before and after

    def list_item(self, node: _Node, place: _Place) -> list[Block]:
        return self.children(node, place)

    def blockquote(self, node: _Node, place: _Place) -> list[Block]:
        return self.children(node, _Place(place.quotes + 1, place.lists, place.marker))

    def code(self, node: _Node, place: _Place) -> list[Block]:
        code = node.token.content.rstrip("\n")
        # no line ends in a space: a format=flowed reader would join it with the next
        return [Block("\n".join((place.prefix + "    " + line).rstrip() for line in code.split("\n")))]

    def rule(self, node: _Node, place: _Place) -> list[Block]:
        return [Block(place.prefix + RULE)]

    def footnote_block(self, node: _Node, place: _Place) -> list[Block]:
        return [Block(place.prefix + RULE), *self.children(node, place)]

    def footnote(self, node: _Node, place: _Place) -> list[Block]:
        self.note = f"[{int(node.token.meta['id']) + 1}] "
        return self.children(node, place)

    def html_block(self, node: _Node, place: _Place) -> list[Block]:
        text = html_text(self.clean(node.token.content), self.refs)
        lines = [line for para in text.split("\n") for line in wrap(para, indent=place.prefix, flowed=True)]
        return [Block("\n".join(lines))]

    def table(self, node: _Node, place: _Place) -> list[Block]:
        rows = [
            [self.inline(cell) for cell in row.children]
            for section in node.children
            for row in section.children
        ]
        return [Block("\n".join((place.prefix + " | ".join(row)).rstrip() for row in rows))]


def _wrap_lines(text: str, indent: str, first: str | None = None, *, flowed: bool = False) -> str:
    """Wrap each hard line of a paragraph; only the first line of the first takes `first`."""
    lines: list[str] = []
    for k, para in enumerate(text.split("\n")):
        lines += wrap(para, indent=indent, first=first if k == 0 else None, flowed=flowed)
    return "\n".join(lines)


def to_text(tokens: Sequence[Token], clean: Callable[[str], str]) -> str:
    """Render a post body as readable plain text; `clean` sanitises its raw HTML as the HTML part's is."""
    refs = References(notes=sum(tok.type == "footnote_open" for tok in tokens))
    renderer = _TextRenderer(clean, refs)
    blocks = renderer.render(_tree(tokens), _Place())
    return join_blocks([*blocks, *refs.blocks()]) + "\n"
