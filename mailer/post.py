"""A markdown file with front matter, read into a Post; every problem names the file and line.

Front matter is YAML between `---` lines, TOML between `+++` lines (Hugo, Zola) or Pelican /
MultiMarkdown `Key: value` header lines, so posts from static-site generators need no rewriting.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import frontmatter
import yaml
from markdown_it.token import Token

from . import markdown
from .errors import PostError
from .headers import one_line

MAX_POST_BYTES = 5 * 1024 * 1024
_H1_TEXT = re.compile(r"^ {0,3}# +(.*?)(?: +#+)? *$")
_TOML_FENCE = re.compile(r"^\+\+\+[ \t]*$", re.MULTILINE)
_TOML_LINE = re.compile(r"\(at line (\d+), column \d+\)")
_HEADER_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9 _-]{0,40}):[ \t]*(.*)$")
# Pelican / MultiMarkdown keys: a first block of `Key: value` lines is a header only with a title or these
_HEADER_KEYS = {
    "title", "date", "modified", "tags", "category", "categories", "slug", "author", "authors", "summary",
    "description", "lang", "status", "image", "cover", "keywords", "subtitle",
}  # fmt: skip
_FILE_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?!\d)")
# what static-site generators call a field, in the order they are tried
_ALIASES = {
    "summary": ("summary", "description"),
    "cover": ("coverimage", "cover_image", "cover", "image", "images", "featured_image"),
    "category": ("category", "categories"),
}


@dataclass(frozen=True)
class Post:
    """What a writer wrote: front matter fields and the markdown body, checked but not rendered."""

    path: Path
    title: str
    date: dt.date | None
    category: str
    tags: tuple[str, ...]
    cover_image: str
    summary: tuple[str, ...]
    body: str
    body_line: int  # line of the file where the body starts, for error messages
    lang: str
    content_hash: str  # of the file's bytes: a changed post is a different version of the same issue

    @property
    def issue_id(self) -> str:
        """The identity of the issue in the delivery record: the file name, made URL- and path-safe."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", self.path.stem).strip("-.")
        if slug:
            return slug[:80]
        prefix = self.date.isoformat() if self.date else "issue"
        return f"{prefix}-{self.content_hash[:8]}"


def load_post(path: Path) -> Post:
    """Read and check one post; raise PostError naming the file (and line) on any problem."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PostError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PostError(f"{path}: is a folder, not a post") from None
    except OSError as exc:
        raise PostError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_post(raw, path)


def parse_post(raw: bytes, path: Path) -> Post:
    """Parse a post's bytes; `path` is only used in messages and for the issue id."""
    if len(raw) > MAX_POST_BYTES:
        raise PostError(
            f"{path}: {len(raw) // 1024} KB is too large for an email "
            f"(limit {MAX_POST_BYTES // 1024 // 1024} MB)"
        )
    if b"\x00" in raw:
        raise PostError(f"{path}: looks like a binary file, not a markdown post")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PostError(f"{path}:{line}: not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise PostError(f"{path}: the file is empty")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    meta, body, body_line = _split_front_matter(text, path)

    title = _text_field(meta, "title", path, text)
    body, h1 = _take_leading_h1(body, title)
    title = title or h1
    if not title:
        raise PostError(
            f"{path}: no title (add `title:` to the front matter or a `# ` heading before the first text)"
        )

    summary = _summary(_alias(meta, "summary"), path, text)
    tags_value = meta.get("tags")
    if tags_value is None:
        tags: tuple[str, ...] = ()
    elif isinstance(tags_value, str):
        tags = tuple(t.strip() for t in tags_value.split(",") if t.strip())
    elif isinstance(tags_value, list):
        # str() of a nested list would expand YAML aliases: a few lines of `&a [*b, *b]` make gigabytes
        if any(isinstance(t, dict | list) for t in tags_value):
            raise PostError(f"{path}:{_key_line(text, 'tags')}: tags must be words, not lists or mappings")
        tags = tuple(one_line(str(t)) for t in tags_value if str(t).strip())
    else:
        raise PostError(f"{path}:{_key_line(text, 'tags')}: tags must be a list or a comma-separated string")
    cover = _alias(meta, "cover")
    if isinstance(cover, dict):  # Hugo themes: `cover: {image: ..., alt: ...}`
        cover = cover.get("image")
    lang = _text_field(meta, "lang", path, text) or guess_lang(title + body[:2000])
    date = _date(meta.get("date"), path, text)
    return Post(
        path=path,
        title=title,
        date=date or _file_date(path),
        category=_text_field({"category": _alias(meta, "category")}, "category", path, text),
        tags=tags,
        cover_image=_text_field({"cover": cover}, "cover", path, text),
        summary=summary,
        body=body,
        body_line=body_line,
        lang=lang,
        content_hash=hashlib.sha256(raw).hexdigest(),
    )


def _split_front_matter(text: str, path: Path) -> tuple[dict[str, object], str, int]:
    """(fields with lower-case names, body, line the body starts on) for any of the three formats."""
    if text.startswith("+++"):
        meta, body, body_line = _toml_front_matter(text, path)
    elif text.startswith("---"):
        meta, body, body_line = _yaml_front_matter(text, path)
    else:
        meta, body, body_line = _header_lines(text)
    return {str(k).lower(): v for k, v in meta.items()}, body, body_line


def _toml_front_matter(text: str, path: Path) -> tuple[dict[str, object], str, int]:
    import tomllib  # for `+++` front matter only: a YAML post does not parse TOML

    end = _TOML_FENCE.search(text, text.find("\n") + 1 if "\n" in text else len(text))
    if not _TOML_FENCE.match(text) or end is None:
        raise PostError(f"{path}:1: the front matter has no closing `+++` line")
    front = text[text.find("\n") + 1 : end.start()]
    try:
        meta: dict[str, object] = tomllib.loads(front)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_LINE.search(str(exc))
        # the TOML starts on the file's line 2; "at end of document" is the last line that holds something
        line = int(found.group(1)) + 1 if found else len(front.rstrip().split("\n")) + 1
        problem = _TOML_LINE.sub("", str(exc)).replace("(at end of document)", "").strip()
        raise PostError(f"{path}:{line}: front matter is not valid TOML: {problem}") from None
    for table in ("params", "extra", "taxonomies"):  # Hugo's and Zola's own fields live in tables
        nested = meta.get(table)
        if isinstance(nested, dict):
            meta = {**{str(k).lower(): v for k, v in nested.items()}, **meta}
    body_line = text.count("\n", 0, end.start()) + 2
    return meta, text[end.end() :].strip("\n"), body_line


def _header_lines(text: str) -> tuple[dict[str, object], str, int]:
    """Pelican / MultiMarkdown metadata: `Key: value` lines up to the first blank line."""
    meta: dict[str, object] = {}
    lines = text.split("\n")
    end = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    key = ""
    for line in lines[:end]:
        match = _HEADER_LINE.match(line)
        if match:
            key = match.group(1).strip().lower()
            meta[key] = match.group(2).strip()
        elif key and line[:1] in " \t":  # MultiMarkdown continues a value on indented lines
            meta[key] = f"{meta[key]}\n{line.strip()}"
        else:
            return {}, text, 1
    if not meta or ("title" not in meta and not set(meta) <= _HEADER_KEYS):
        return {}, text, 1
    return meta, "\n".join(lines[end + 1 :]).strip("\n"), end + 2


def _yaml_front_matter(text: str, path: Path) -> tuple[dict[str, object], str, int]:
    handler = frontmatter.YAMLHandler()
    try:
        front, body = handler.split(text)
    except ValueError:
        if re.match(r"---[ \t]*\n[ \t]*[A-Za-z_][\w-]*[ \t]*:", text):  # `---` then `key:`: not closed
            raise PostError(f"{path}:1: the front matter has no closing `---` line") from None
        return {}, text, 1  # a leading rule, not front matter
    try:
        meta = handler.load(front)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        # the YAML text starts with the newline after the opening ---, so its 0-based line is the file's
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PostError(f"{path}:{line}: front matter is not valid YAML: {problem}") from None
    except ValueError as exc:  # PyYAML builds dates itself: 2026-02-30 raises here
        raise PostError(
            f"{path}:{_key_line(text, 'date')}: front matter holds a date that is no date ({exc})"
        ) from None
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        kind = "a list" if isinstance(meta, list) else f"a {type(meta).__name__}"
        raise PostError(f"{path}:2: front matter must be `key: value` lines, not {kind}")
    end = text.find("\n---", 3)
    body_line = text.count("\n", 0, end) + 3 if end != -1 else 1
    return meta, body.strip("\n"), body_line


def _key_line(text: str, key: str) -> int:
    names = "|".join(re.escape(name) for name in _ALIASES.get(key, (key,)))
    match = re.search(rf"^\s*(?:{names})\s*[:=]", text, re.MULTILINE | re.IGNORECASE)
    return text.count("\n", 0, match.start()) + 1 if match else 1


def _alias(meta: dict[str, object], field: str) -> object:
    """The first of a field's names that the front matter sets; of a list (`images`), its first item."""
    for name in _ALIASES[field]:
        value = meta.get(name)
        if field != "summary" and isinstance(value, list) and value and not isinstance(value[0], dict | list):
            return value[0]
        if value is not None and value != []:
            return value
    return None


def _file_date(path: Path) -> dt.date | None:
    """The date a file name starts with (`2024-10-02-this-week-in-rust.md`), if it is a real date."""
    match = _FILE_DATE.match(path.name)
    if not match:
        return None
    try:
        return dt.date(*(int(part) for part in match.groups()))
    except ValueError:
        return None


def _text_field(meta: dict[str, object], key: str, path: Path, text: str) -> str:
    value = meta.get(key)
    if value is None:
        return ""
    if isinstance(value, dict | list):
        raise PostError(f"{path}:{_key_line(text, key)}: {key} must be text, not a {type(value).__name__}")
    return one_line(str(value))


def _date(value: object, path: Path, text: str) -> dt.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str | int | float):  # str() of a list would expand its YAML aliases
        raise PostError(
            f"{path}:{_key_line(text, 'date')}: date must be YYYY-MM-DD, not a {type(value).__name__}"
        )
    try:
        return dt.datetime.fromisoformat(str(value).strip()).date()
    except ValueError:
        raise PostError(
            f"{path}:{_key_line(text, 'date')}: date {str(value)[:40]!r} is not a date (use YYYY-MM-DD)"
        ) from None


def _summary(value: object, path: Path, text: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        lines = value.splitlines()
    elif isinstance(value, list):
        lines = [str(item) for item in value if not isinstance(item, dict | list)]
        if len(lines) != len(value):
            raise PostError(f"{path}:{_key_line(text, 'summary')}: summary items must be text")
    else:
        raise PostError(f"{path}:{_key_line(text, 'summary')}: summary must be text or a list")
    bullets = (one_line(re.sub(r"^\s*[-*•]\s+", "", line)) for line in lines)
    return tuple(b for b in bullets if b)


_LOOK = 4096  # characters from a post's start (then up to a blank line) that almost always show how it starts


def _take_leading_h1(body: str, title: str) -> tuple[str, str]:
    """Find the first H1 before the first paragraph (badges, comments and rules may come first).

    It supplies a missing title and is removed when it repeats the title; return (body, its text).
    Only the post's first few KB are parsed when they show its first block, as they almost always do.
    """
    cut = body.find("\n\n", _LOOK)
    tok = _first_block(body[: cut + 1]) if cut != -1 else None
    if tok is None:
        tok = _first_block(body)
    if tok is None or tok.type != "heading_open" or tok.map is None:
        return body, ""
    lines = body.split("\n")
    start, end = tok.map
    match = _H1_TEXT.match(lines[start]) if end - start == 1 else None
    heading = one_line(match.group(1) if match else lines[start])
    if title and not _same(heading, title):
        return body, ""
    lines[start:end] = [""] * (end - start)
    return "\n".join(lines), heading


def _first_block(text: str) -> Token | None:
    """The opening token of the first top-level block that is not an HTML block, a rule, a heading below H1
    or a paragraph of images (None if there is none).

    Of a body cut at a blank line, every block that starts before the cut is the one the whole body has
    there: only a block that runs on past the cut (an HTML comment, a footnote) may hide what follows it,
    and then there is none after it.
    """
    tokens = markdown.parse_blocks(text)  # the inline content is not needed to see the start
    for i, tok in enumerate(tokens):
        if tok.level != 0 or tok.type in ("html_block", "hr") or tok.type.endswith("_close"):
            continue
        if tok.type == "heading_open" and tok.tag != "h1":
            continue
        if tok.type == "paragraph_open" and _only_images(tokens[i + 1]):
            continue
        return tok
    return None


def _only_images(inline: Token) -> bool:
    """A paragraph of badges or a lone picture is not the first paragraph of text."""
    children = markdown.inline_children(inline)
    kinds = {tok.type for tok in children}
    if "image" not in kinds or not kinds <= {"image", "link_open", "link_close", "softbreak", "text"}:
        return False
    return not any(tok.type == "text" and tok.content.strip() for tok in children)


def _same(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return re.sub(r"[\s*_`]+", "", s).casefold()

    return norm(a) == norm(b)


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def guess_lang(text: str) -> str:
    """Guess zh/ja/ko or en from the share of CJK characters, for the lang attribute and footer words."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "en"
    cjk = sum(1 for c in letters if _CJK.match(c))
    if cjk / len(letters) < 0.2:
        return "en"
    if re.search(r"[\u3040-\u30ff]", text):
        return "ja"
    if re.search(r"[\uac00-\ud7af]", text):
        return "ko"
    return "zh"
