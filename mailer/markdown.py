"""markdown-it set up for newsletters: CommonMark, tables, CJK-friendly emphasis, and a text renderer."""

from __future__ import annotations

import re
import types
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.common.utils import isMdAsciiPunct, isPunctChar, isWhiteSpace
from markdown_it.rules_inline.state_inline import Scanned, StateInline
from markdown_it.token import Token
from mdit_py_plugins.footnote import footnote_plugin

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


def is_cjk(char: str) -> bool:
    """True for CJK ideographs, kana, hangul and full-width punctuation."""
    return _CJK_CHAR.match(char) is not None


class _CJKStateInline(StateInline):
    """CommonMark's flanking rules, relaxed next to CJK text.

    CommonMark only lets `**` close after punctuation when whitespace or punctuation follows, so
    `**BiPS（双向感知塑形）**新方法` would print its asterisks: Chinese has no spaces to give.
    As in the markdown-cjk-friendly proposal, a CJK neighbour counts as a word boundary.
    """

    def scanDelims(self, start: int, canSplitWord: bool) -> Scanned:  # noqa: N802 (upstream name)
        pos = start
        maximum = self.posMax
        marker = self.src[start]
        last = self.src[start - 1] if start > 0 else " "
        while pos < maximum and self.src[pos] == marker:
            pos += 1
        count = pos - start
        nxt = self.src[pos] if pos < maximum else " "

        last_punct = isMdAsciiPunct(ord(last)) or isPunctChar(last)
        next_punct = isMdAsciiPunct(ord(nxt)) or isPunctChar(nxt)
        last_space = isWhiteSpace(ord(last))
        next_space = isWhiteSpace(ord(nxt))
        last_cjk = is_cjk(last)
        next_cjk = is_cjk(nxt)

        # full-width punctuation is CJK too, so `A**（括号）**B` opens and closes like `A**括号**B`
        left = not next_space and (not next_punct or next_cjk or last_space or last_punct or last_cjk)
        right = not last_space and (not last_punct or last_cjk or next_space or next_punct or next_cjk)
        can_open = left and (canSplitWord or not right or last_punct)
        can_close = right and (canSplitWord or not left or next_punct)
        return Scanned(can_open, can_close, count)


def _inline_parse(self: Any, src: str, md: MarkdownIt, env: Any, tokens: list[Token]) -> list[Token]:
    state = _CJKStateInline(src, md, env, tokens)
    self.tokenize(state)
    for rule in self.ruler2.getRules(""):
        rule(state)
    return state.tokens


def _join_cjk_lines(state: Any) -> None:
    """Drop a soft line break between two CJK characters: browsers would show it as a space."""
    for block in state.tokens:
        children = block.children or []
        for i, tok in enumerate(children):
            if tok.type != "softbreak" or i == 0 or i + 1 >= len(children):
                continue
            before, after = children[i - 1], children[i + 1]
            if before.type == "text" and after.type == "text":
                if (
                    before.content
                    and after.content
                    and is_cjk(before.content[-1])
                    and is_cjk(after.content[0])
                ):
                    tok.type = "text"
                    tok.content = ""


def _note_number(tokens: Sequence[Token], idx: int) -> int:
    return int(tokens[idx].meta["id"]) + 1


# Footnotes as numbered notes at the end, without the plugin's in-page links (#fn1 and the ↩ back links):
# most inboxes do not follow them, and `mailer check` warns about them.
_FOOTNOTE_HTML: dict[str, Any] = {
    "footnote_ref": lambda self, tokens, idx, options, env: f"<sup>[{_note_number(tokens, idx)}]</sup>",
    "footnote_block_open": lambda self, tokens, idx, options, env: '<hr>\n<ol class="footnotes">\n',
    "footnote_block_close": lambda self, tokens, idx, options, env: "</ol>\n",
    "footnote_open": lambda self, tokens, idx, options, env: "<li>",
    "footnote_close": lambda self, tokens, idx, options, env: "</li>\n",
    "footnote_anchor": lambda self, tokens, idx, options, env: "",
}


@lru_cache(maxsize=1)
def parser() -> MarkdownIt:
    """The one markdown-it instance: CommonMark, raw HTML allowed (sanitised later), tables, strikethrough,
    footnotes."""
    md = MarkdownIt("commonmark", {"html": True, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.use(footnote_plugin)
    for name, html in _FOOTNOTE_HTML.items():
        md.add_render_rule(name, html)
    md.inline.parse = types.MethodType(_inline_parse, md.inline)  # type: ignore[method-assign]
    md.core.ruler.push("join_cjk_lines", _join_cjk_lines)
    return md


def parse(body: str) -> list[Token]:
    """Tokenise a post body."""
    return parser().parse(body)


def to_html(tokens: Sequence[Token]) -> str:
    """Render tokens to HTML (unsanitised: raw HTML blocks pass through)."""
    md = parser()
    return str(md.renderer.render(list(tokens), md.options, {}))


# --- plain text ------------------------------------------------------------------------------

WIDTH = 76
_CLOSING = set("，。、；：？！）」』》】〉〕”’,.;:?!)]}…%")
_OPENING = set("（「『《【〈〔“‘([{")


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


def inline_text(tokens: Sequence[Token] | None, refs: list[str | None] | None = None) -> str:
    """Flatten inline tokens: links as `text[n]` with the URL appended to `refs` (as `text (url)` without
    it), images as `[alt]`, markup dropped."""
    out: list[str] = []
    link_stack: list[tuple[str, int]] = []
    for tok in tokens or ():
        kind = tok.type
        if kind in ("text", "code_inline"):
            out.append(tok.content)
        elif kind == "softbreak":
            out.append(" ")
        elif kind == "hardbreak":
            out.append("\n")
        elif kind == "link_open":
            link_stack.append((str(tok.attrGet("href") or ""), len(out)))
        elif kind == "link_close" and link_stack:
            href, start = link_stack.pop()
            label = "".join(out[start:]).strip()
            if href and href != label and not href.startswith("#"):
                if label and refs is not None:
                    refs.append(href)
                    out.append(f"[{len(refs)}]")
                else:
                    out.append(f" ({href})" if label else href)
        elif kind == "footnote_ref":
            out.append(f"[{int(tok.meta['id']) + 1}]")
        elif kind == "image":
            alt = tok.content or "image"
            out.append(f"[{alt}]")
        elif kind == "html_inline":
            if tok.content.lower().startswith("<br"):
                out.append("\n")
    return "".join(out)


_ITEM = "\x00"  # marks a list item's block, so items of one list sit on consecutive lines
_LIST_END = "\x01"  # a list ended: whatever follows, even another list, gets a blank line


def to_text(tokens: Sequence[Token], html_to_text: Any) -> str:
    """Render a post body as readable plain text (not a tag-strip of the HTML)."""
    blocks: list[str] = []
    lists: list[list[int]] = []  # stack of [ordered?, counter]
    quote = 0
    table_rows: list[list[str]] = []
    row: list[str] = []
    pending_item = False
    heading_level = 0
    in_cell = False
    previous_item = False
    note = ""  # the number of the footnote whose text comes next
    # links' URLs, numbered after the footnotes and listed at the end: a URL in the middle of a sentence
    # (a Chinese one above all) breaks it up
    refs: list[str | None] = [None] * sum(tok.type == "footnote_open" for tok in tokens)
    notes = len(refs)
    for tok in tokens:
        kind = tok.type
        prefix = "> " * quote
        if kind == "heading_open":
            heading_level = int(tok.tag[1])
        elif kind == "bullet_list_open":
            lists.append([0, 0])
        elif kind == "ordered_list_open":
            lists.append([1, int(str(tok.attrGet("start") or 1)) - 1])
        elif kind in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
            if not lists:
                blocks.append(_LIST_END)
        elif kind == "list_item_open":
            lists[-1][1] += 1
            pending_item = True
        elif kind == "blockquote_open":
            quote += 1
        elif kind == "blockquote_close":
            quote -= 1
        elif kind in ("th_open", "td_open"):
            in_cell = True
        elif kind in ("th_close", "td_close"):
            in_cell = False
        elif kind == "inline" and in_cell:
            row.append(inline_text(tok.children, refs).strip())
        elif kind == "footnote_block_open":
            blocks.append(prefix + "-" * 24)
        elif kind == "footnote_open":
            note = f"[{int(tok.meta['id']) + 1}] "
        elif kind == "inline":
            text = inline_text(tok.children, refs).strip()
            if note:
                lines = wrap(text, indent=" " * len(note), first=note)
                blocks.append("\n".join(lines))
                note = ""
                continue
            if heading_level:  # underlined by level (= - ~); smaller headings stand on their own line
                lines = [text]
                if heading_level <= 3:
                    lines.append("=-~"[heading_level - 1] * min(text_width(text), WIDTH))
                blocks.append("\n".join(prefix + line for line in lines))
                heading_level = 0
                continue
            depth = len(lists)
            if depth and pending_item:
                ordered, n = lists[-1]
                marker = f"{n}. " if ordered else "- "
                pad = "   " * (depth - 1)
                first = prefix + pad + marker
                lines = []
                for k, para in enumerate(text.split("\n")):
                    lines += wrap(
                        para,
                        indent=prefix + pad + " " * len(marker),
                        first=first if k == 0 else None,
                    )
                blocks.append(_ITEM + "\n".join(lines))
                pending_item = False
            else:
                pad = prefix + "   " * depth
                lines = []
                for para in text.split("\n"):
                    lines += wrap(para, indent=pad)
                blocks.append((_ITEM if depth else "") + "\n".join(lines))
        elif kind in ("fence", "code_block"):
            code = tok.content.rstrip("\n")
            blocks.append("\n".join(prefix + "    " + line for line in code.split("\n")))
        elif kind == "hr":
            blocks.append(prefix + "-" * 24)
        elif kind == "html_block":
            text = html_to_text(tok.content)
            if text.strip():
                lines = []
                for para in text.split("\n"):
                    lines += wrap(para, indent=prefix) if para.strip() else []
                blocks.append("\n".join(lines))
        elif kind == "tr_open":
            row = []
        elif kind == "tr_close":
            table_rows.append(row)
        elif kind == "table_close":
            blocks.append("\n".join(prefix + " | ".join(r) for r in table_rows))
            table_rows = []
    if len(refs) > notes:
        if not notes:
            blocks.append("-" * 24)
        blocks.append("\n".join(f"[{n}] {url}" for n, url in enumerate(refs, 1) if url))
    out = ""
    for block in blocks:
        if block == _LIST_END:
            previous_item = False
            continue
        if not block.strip(_ITEM + " \n"):
            continue
        if out:
            tight = block.startswith(_ITEM) and previous_item
            out += "\n" if tight else "\n\n"
        out += block.removeprefix(_ITEM)
        previous_item = block.startswith(_ITEM)
    return out + "\n"
