"""Personal fields: the small expression language of `{{ ... }}` and `{% if ... %}` in posts and templates.

A post is untrusted input, so it is not handed to jinja2: an expression here can only read the subscriber's
fields (strings), compare them, pick the first non-empty one and apply a few string filters. There is no
attribute access, no call, no number, no loop and no operator that makes a string longer than its parts,
so evaluating one for a subscriber costs a few dictionary look-ups. Expressions are compiled once per
issue; per subscriber only the compiled closures run (mailer.render's Value and Choice slots).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

Values = Mapping[str, str]
Expr = Callable[[Values], str]

MAX_DEPTH = 16  # nested conditions, and nested brackets or `not`s within one expression
MAX_TAG = 400  # characters inside one {{ }} or {% %}
FILTERS: dict[str, Callable[[str], str]] = {
    "upper": str.upper,
    "lower": str.lower,
    "title": str.title,
    "capitalize": str.capitalize,
    "trim": str.strip,
}
DEFAULT_FILTERS = ("default", "d")
_TOKEN = re.compile(
    r"""\s*(?:(?P<str>"[^"\\\r\n]*"|'[^'\\\r\n]*')|(?P<op>==|!=|[.\[\]()|,])|(?P<name>[^\W\d]\w*))""",
    re.UNICODE,
)


class FieldError(ValueError):
    """An expression mailer does not read; the message says what is wrong, the caller says where."""


@dataclass(frozen=True)
class Tag:
    """One `{{ expr }}` (kind "value") or `{% if/elif/else/endif %}` found in a post or template."""

    kind: str
    expr: Expr | None
    source: str  # the text between the braces, for messages and for bench's mailmerge template


def truthy(value: str) -> bool:
    """A field counts as set when it has more than white space."""
    return bool(value.strip())


def compile_expression(source: str, *, bare_names: bool) -> Expr:
    """The expression as a function of the subscriber's values.

    `subscriber.city` and `subscriber["first name"]` read a field (missing: empty); in a post (`bare_names`)
    `city` does too. `a or b`, `a and b`, `not a`, `a == "x"`, `a != "x"`, brackets, "strings", and the
    filters `default("x")` (also when the field is empty), upper, lower, title, capitalize, trim.
    """
    if len(source) > MAX_TAG:
        raise FieldError(f"longer than {MAX_TAG} characters")
    tokens = list(_tokens(source))
    parser = _Parser(tokens, bare_names)
    expr = parser.expression(0)
    if parser.pos < len(tokens):
        raise FieldError(f"unexpected {tokens[parser.pos][1]!r}")
    return expr


def _tokens(source: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(source):
        if not source[pos:].strip():
            return
        m = _TOKEN.match(source, pos)
        if m is None:
            bad = source[pos:].strip()[:12]
            raise FieldError(f"{bad!r} is not part of mailer's field expressions")
        kind = m.lastgroup or ""
        yield kind, m.group(kind)
        pos = m.end()


class _Parser:
    """Recursive descent over the tokens: or > and > not > comparison > filters > primary."""

    def __init__(self, tokens: list[tuple[str, str]], bare_names: bool) -> None:
        self.tokens = tokens
        self.pos = 0
        self.bare_names = bare_names

    def peek(self) -> str | None:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise FieldError(
                "the expression ends too early" + (f", expected {expected!r}" if expected else "")
            )
        token = self.tokens[self.pos]
        if expected is not None and token[1] != expected:
            raise FieldError(f"expected {expected!r}, found {token[1]!r}")
        self.pos += 1
        return token

    def expression(self, depth: int) -> Expr:
        if depth > MAX_DEPTH:
            raise FieldError(f"nested deeper than {MAX_DEPTH}")
        left = self.conjunction(depth)
        while self.peek() == "or":
            self.take()
            left = _or(left, self.conjunction(depth))
        return left

    def conjunction(self, depth: int) -> Expr:
        left = self.negation(depth)
        while self.peek() == "and":
            self.take()
            left = _and(left, self.negation(depth))
        return left

    def negation(self, depth: int) -> Expr:
        if self.peek() == "not":
            self.take()
            if depth > MAX_DEPTH:
                raise FieldError(f"nested deeper than {MAX_DEPTH}")
            inner = self.negation(depth + 1)
            return lambda v: "" if truthy(inner(v)) else "true"
        return self.comparison(depth)

    def comparison(self, depth: int) -> Expr:
        left = self.filtered(depth)
        op = self.peek()
        if op in ("==", "!="):
            self.take()
            right = self.filtered(depth)
            same = op == "=="
            return lambda v: "true" if (left(v) == right(v)) == same else ""
        return left

    def filtered(self, depth: int) -> Expr:
        expr = self.primary(depth)
        while self.peek() == "|":
            self.take()
            kind, name = self.take()
            if kind != "name":
                raise FieldError(f"a filter name must follow '|', not {name!r}")
            if name in DEFAULT_FILTERS:
                self.take("(")
                fallback = self.expression(depth + 1)
                self.take(")")
                expr = _or(expr, fallback)
            elif name in FILTERS:
                expr = _apply(FILTERS[name], expr)
            else:
                known = ", ".join((*DEFAULT_FILTERS, *FILTERS))
                raise FieldError(f"no filter {name!r} (there are: {known})")
        return expr

    def primary(self, depth: int) -> Expr:
        kind, text = self.take()
        if kind == "str":
            literal = text[1:-1]
            return lambda v: literal
        if text == "(":
            inner = self.expression(depth + 1)
            self.take(")")
            return inner
        if kind != "name" or text in ("or", "and", "not"):
            raise FieldError(f"unexpected {text!r}")
        if text == "subscriber":
            if self.peek() == ".":
                self.take()
                kind, field = self.take()
                if kind != "name":
                    raise FieldError(f"a field name must follow 'subscriber.', not {field!r}")
            elif self.peek() == "[":
                self.take()
                kind, quoted = self.take()
                if kind != "str":
                    raise FieldError("subscriber[...] takes a field name in quotes")
                field = quoted[1:-1]
                self.take("]")
            else:
                raise FieldError("'subscriber' alone is not a value: write subscriber.NAME")
            return _field(field)
        if not self.bare_names:
            raise FieldError(f'{text!r}: only subscriber.NAME and "text" can be used here')
        if self.peek() in (".", "[", "("):
            raise FieldError(f"{text}{self.peek()}: a field is read as {{{{ {text} }}}} or subscriber.{text}")
        return _field(text)


def _field(name: str) -> Expr:
    if name.startswith("_"):
        raise FieldError(f"{name!r} is not a field name (fields do not start with '_')")
    key = name.lower()
    return lambda v: v.get(key) or ""


def _or(left: Expr, right: Expr) -> Expr:
    def either(v: Values) -> str:
        value = left(v)
        return value if truthy(value) else right(v)

    return either


def _and(left: Expr, right: Expr) -> Expr:
    def both(v: Values) -> str:
        value = left(v)
        return right(v) if truthy(value) else value

    return both


def _apply(function: Callable[[str], str], expr: Expr) -> Expr:
    return lambda v: function(expr(v))


_OPEN = re.compile(r"\{\{|\{%")
_CONTROL = re.compile(r"-?\s*(if|elif|else|endif)\b(.*?)\s*-?\s*\Z", re.S)


def read_tag(opener: str, inner: str, *, bare_names: bool) -> Tag:
    """The Tag for the text between `{{`/`{%` and `}}`/`%}`; FieldError when mailer does not read it."""
    if opener == "{{":
        source = inner.strip().removeprefix("-").removesuffix("-").strip()
        if not source:
            raise FieldError("an empty {{ }}")
        return Tag("value", compile_expression(source, bare_names=bare_names), source)
    m = _CONTROL.match(inner.strip())
    if m is None:
        word = (inner.strip().lstrip("-").split() or [""])[0]
        raise FieldError(f"{{% {word} %}}: only if, elif, else and endif are understood between {{% %}}")
    kind, rest = m.group(1), m.group(2).strip()
    if kind in ("if", "elif"):
        if not rest:
            raise FieldError(f"{{% {kind} %}} needs a condition")
        return Tag(kind, compile_expression(rest, bare_names=bare_names), rest)
    if rest:
        raise FieldError(f"{{% {kind} %}} takes nothing after it, found {rest[:20]!r}")
    return Tag(kind, None, kind)


def tag_end(text: str, start: int, closer: str) -> int:
    """Where the tag opened at `start` closes (the index after its closer), skipping quoted strings; -1 if
    it never does."""
    pos, quote = start + 2, ""
    while pos < len(text):
        ch = text[pos]
        if quote:
            if ch == quote:
                quote = ""
            elif ch == "\n":
                quote = ""  # a string does not cross a line: the quote was text, not a string
        elif ch in "\"'":
            quote = ch
        elif text.startswith(closer, pos):
            return pos + 2
        pos += 1
    return -1


def find_tags(text: str, literal: Callable[[int], bool]) -> Iterator[tuple[int, int, str]]:
    """(start, end, opener) of each `{{ }}` or `{% %}` in text whose start is not literal (code);
    FieldError naming the offset (`.args[1]`) for one that is never closed."""
    pos = 0
    while True:
        m = _OPEN.search(text, pos)
        if m is None:
            return
        start = m.start()
        if literal(start):
            pos = start + 1
            continue
        opener = m.group()
        end = tag_end(text, start, "}}" if opener == "{{" else "%}")
        if end < 0:
            raise FieldError(f"{opener} is never closed", start)
        yield start, end, opener
        pos = end


_TEMPLATE_TAG = re.compile(
    r"\{%-?\s*raw\s*-?%\}.*?\{%-?\s*endraw\s*-?%\}|\{#.*?#\}|(\{\{)(.*?)\}\}|(\{%)(.*?)%\}", re.S
)
_SUBSCRIBER = re.compile(r"\bsubscriber\b")


def rewrite_template(source: str, call: str) -> str:
    """A template's source with each `{{ }}` and `{% if/elif/else/endif %}` that reads `subscriber` made a
    call of `call`, which hands out a slot marker at render time: so jinja2 renders the template once per
    issue and the condition is decided per subscriber. FieldError (message, line) for a tag that mixes
    personal and per-issue conditions or reads subscriber elsewhere."""
    out: list[str] = []
    pos = 0
    personal_ifs: list[bool] = []
    for m in _TEMPLATE_TAG.finditer(source):
        opener = m.group(1) or m.group(3)
        if opener is None:
            continue
        inner = m.group(2) if m.group(1) else m.group(4)
        line = source.count("\n", 0, m.start()) + 1
        words = inner.strip().lstrip("-").split()
        word = words[0] if words and opener == "{%" else ""
        mine = bool(_SUBSCRIBER.search(inner))
        if word == "if":
            personal_ifs.append(mine)
        elif word in ("elif", "else", "endif") and personal_ifs:
            if word == "elif" and mine != personal_ifs[-1]:
                raise FieldError("{% elif %} reading subscriber needs an {% if %} reading it, and back", line)
            mine = personal_ifs.pop() if word == "endif" else personal_ifs[-1]
        elif mine and opener == "{%":
            raise FieldError("subscriber's fields can be used in {{ }} and {% if/elif %} only", line)
        if not mine:
            continue
        lead = "-" if inner.startswith("-") else ""
        trail = "-" if inner.endswith("-") else ""
        args = ", ".join(_jinja_string(x) for x in (opener, inner))
        out.append(source[pos : m.start()] + f"{{{{{lead} {call}({args}, {line}) {trail}}}}}")
        pos = m.end()
    out.append(source[pos:])
    return "".join(out)


def _jinja_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_BACKTICKS = re.compile(r"`+")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def literal_spans(body: str) -> list[tuple[int, int]]:
    """Where a post's text is shown as typed: code blocks, inline code and raw <pre>/<code> blocks, so a
    post about jinja2 shows its `{{ }}`. Sorted (start, end) offsets."""
    from .markdown import parse

    starts = [0]
    for line in body.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    blocks = []
    for tok in parse(body):
        literal = tok.type in ("fence", "code_block") or (
            tok.type == "html_block" and re.search(r"<(pre|code)\b", tok.content, re.I)
        )
        if literal and tok.map:
            last = len(starts) - 1
            blocks.append((starts[min(tok.map[0], last)], starts[min(tok.map[1], last)]))
    spans = list(blocks)
    runs = [m for m in _BACKTICKS.finditer(body) if not _inside(blocks, m.start())]
    i = 0
    while i < len(runs):  # a code span: n backticks up to the next run of exactly n, in one paragraph
        opening = runs[i]
        for j in range(i + 1, len(runs)):
            closing = runs[j]
            if _BLANK_LINE.search(body, opening.end(), closing.start()):
                break
            if len(closing.group()) == len(opening.group()):
                spans.append((opening.start(), closing.end()))
                i = j
                break
        i += 1
    return sorted(spans)


def _inside(spans: list[tuple[int, int]], pos: int) -> bool:
    return any(a <= pos < b for a, b in spans)


def mark_post(body: str, marker: Callable[[Tag], str]) -> str:
    """The post's body with each tag outside code replaced by marker(tag); FieldError (message, offset)."""
    if _OPEN.search(body) is None:  # most posts: no tag at all, and no second markdown parse to find code
        return body
    spans = literal_spans(body)
    out: list[str] = []
    pos = 0
    depth = 0
    for start, end, opener in find_tags(body, lambda at: _inside(spans, at)):
        try:
            tag = read_tag(opener, body[start + 2 : end - 2], bare_names=True)
        except FieldError as exc:
            raise FieldError(f"{body[start:end][:60]!r}: {exc.args[0]}", start) from None
        depth += {"if": 1, "endif": -1}.get(tag.kind, 0)
        if depth < 0 or (depth == 0 and tag.kind in ("elif", "else")):
            raise FieldError(f"{{% {tag.kind} %}} without an {{% if %}} before it", start)
        if depth > MAX_DEPTH:
            raise FieldError(f"conditions nested deeper than {MAX_DEPTH}", start)
        out += (body[pos:start], marker(tag))
        pos = end
    if depth:
        raise FieldError("an {% if %} is never closed by {% endif %}", len(body))
    out.append(body[pos:])
    return "".join(out)
