"""markdown-it set up for newsletters: CommonMark, tables, footnotes, CJK-friendly emphasis.

The plain-text part is rendered from its tokens in plaintext.py.
"""

from __future__ import annotations

import re
import types
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.common.normalize_url import normalizeLink
from markdown_it.common.utils import isMdAsciiPunct, isPunctChar, isWhiteSpace
from markdown_it.rules_inline.state_inline import Scanned, StateInline
from markdown_it.token import Token
from mdit_py_plugins.attrs import attrs_plugin
from mdit_py_plugins.footnote import footnote_plugin

from .linebreak import is_cjk


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


# A link as posts mostly write it: http(s), a host name of ASCII labels, and a path, query and fragment
# of characters that need no escape (no %, @, quote, space or non-ASCII one). markdown-it's normalizeLink
# (mdurl's parse and format, punycode, percent-encoding: about 10 µs a link) gives such a URL back as it is.
_PLAIN_LINK = re.compile(
    r"https?://[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*(?:[/?#][\w\-.~/?#&=+,;:!*()$]*)?", re.ASCII
)


def _normalize_link(url: str) -> str:
    """markdown-it's normalizeLink, skipped for a plain link it would return as it is."""
    if len(url) <= 255 and _PLAIN_LINK.fullmatch(url):  # mdurl drops a host name over 255 characters
        return url
    return normalizeLink(url)


@lru_cache(maxsize=1)
def parser() -> MarkdownIt:
    """The one markdown-it instance: CommonMark, raw HTML allowed (sanitised later), tables, strikethrough,
    footnotes, an image's size in braces."""
    md = MarkdownIt("commonmark", {"html": True, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.use(footnote_plugin)
    md.use(attrs_plugin, after=("image",), allowed=("width", "height"))  # ![alt](src){width=300 height=200}
    for name, html in _FOOTNOTE_HTML.items():
        md.add_render_rule(name, html)
    md.normalizeLink = _normalize_link  # type: ignore[method-assign]
    md.inline.parse = types.MethodType(_inline_parse, md.inline)  # type: ignore[method-assign]
    md.core.ruler.push("join_cjk_lines", _join_cjk_lines)
    return md


def parse(body: str) -> list[Token]:
    """Tokenise a post body."""
    return parser().parse(body)


@lru_cache(maxsize=1)
def _block_parser() -> MarkdownIt:
    md = parser.__wrapped__()  # an instance of its own: the inline pass is off in this one only
    md.disable("inline")
    return md


def parse_blocks(body: str) -> list[Token]:
    """The blocks of a post body with their inline content left unparsed (`inline_children` parses one):
    a look at how a post starts costs a fraction of a whole parse."""
    return _block_parser().parse(body)


def inline_children(inline: Token) -> list[Token]:
    """The parsed children of an inline token from parse_blocks()."""
    return parser().parseInline(inline.content)[0].children or []


def to_html(tokens: Sequence[Token]) -> str:
    """Render tokens to HTML (unsanitised: raw HTML blocks pass through)."""
    md = parser()
    return str(md.renderer.render(list(tokens), md.options, {}))
