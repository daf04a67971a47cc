"""A markdown file with YAML front matter, read into a Post; every problem names the file and line."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import frontmatter
import yaml

from .errors import PostError

MAX_POST_BYTES = 5 * 1024 * 1024
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_H1 = re.compile(r"^ {0,3}# +(.*?)(?: +#+)? *$")
_SPACES = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")


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
        raise PostError(f"{path}: no title (add `title:` to the front matter or start with a `# ` heading)")

    summary = _summary(meta.get("summary"), path, text)
    tags_value = meta.get("tags")
    if tags_value is None:
        tags: tuple[str, ...] = ()
    elif isinstance(tags_value, str):
        tags = tuple(t.strip() for t in tags_value.split(",") if t.strip())
    elif isinstance(tags_value, list):
        # str() of a nested list would expand YAML aliases: a few lines of `&a [*b, *b]` make gigabytes
        if any(isinstance(t, dict | list) for t in tags_value):
            raise PostError(f"{path}:{_key_line(text, 'tags')}: tags must be words, not lists or mappings")
        tags = tuple(_clean(str(t)) for t in tags_value if str(t).strip())
    else:
        raise PostError(f"{path}:{_key_line(text, 'tags')}: tags must be a list or a comma-separated string")
    cover = _text_field(meta, "coverImage", path, text) or _text_field(meta, "cover_image", path, text)
    lang = _text_field(meta, "lang", path, text) or guess_lang(title + body[:2000])
    return Post(
        path=path,
        title=title,
        date=_date(meta.get("date"), path, text),
        category=_text_field(meta, "category", path, text),
        tags=tags,
        cover_image=cover,
        summary=summary,
        body=body,
        body_line=body_line,
        lang=lang,
        content_hash=hashlib.sha256(raw).hexdigest(),
    )


def _split_front_matter(text: str, path: Path) -> tuple[dict[str, object], str, int]:
    if not text.startswith("---"):
        return {}, text, 1
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
    match = re.search(rf"^{re.escape(key)}\s*:", text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else 1


def _clean(value: str) -> str:
    """Collapse whitespace and drop control characters, so no field can add a header line."""
    return _SPACES.sub(" ", _CONTROL.sub("", value)).strip()


def _text_field(meta: dict[str, object], key: str, path: Path, text: str) -> str:
    value = meta.get(key)
    if value is None:
        return ""
    if isinstance(value, dict | list):
        raise PostError(f"{path}:{_key_line(text, key)}: {key} must be text, not a {type(value).__name__}")
    return _clean(str(value))


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
    bullets = (_clean(re.sub(r"^\s*[-*•]\s+", "", line)) for line in lines)
    return tuple(b for b in bullets if b)


def _take_leading_h1(body: str, title: str) -> tuple[str, str]:
    """Remove a first-line H1 that repeats the title (or supplies one); return (body, its text)."""
    lines = body.split("\n")
    in_fence = False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            in_fence = not in_fence
        if in_fence or not line.strip():
            continue
        match = _H1.match(line)
        if not match:
            return body, ""
        heading = _clean(match.group(1))
        if not title or _same(heading, title):
            lines[i] = ""
            return "\n".join(lines), heading
        return body, ""
    return body, ""


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
