"""Post -> Issue: markdown-it, jinja2 and premailer run once per issue; per-subscriber values are slots."""

from __future__ import annotations

import html as htmlmod
import importlib
import logging
import re
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import jinja2
import jinja2.ext
from lxml import etree
from markdown_it.token import Token
from markupsafe import Markup

from . import markdown
from .config import Settings
from .embeds import embed_label
from .errors import PostError
from .fields import Expr, FieldError, Tag, mark_post, read_tag, rewrite_template, truthy
from .fold import fold
from .headers import one_line
from .imagefetch import look_up
from .images import ImageReport, fit_images
from .inlined import FOLDER as INLINED
from .inlined import inline_cached
from .linebreak import WIDTH, flowed_part, text_width, wrap
from .links import links_look_like_links
from .plaintext import to_text
from .post import Post
from .sanitize import Findings, sanitize
from .slim import class_names, drop_layout_whitespace, drop_unused_classes, minify_css, slim_styles

WORDS = {
    "en": {
        "summary": "In this issue",
        "unsubscribe": "Unsubscribe",
        "view_in_browser": "View in browser",
        "why": "You are receiving this because you subscribed to {name}.",
        "open": "Open",
        "watch": "Watch the video on {host}",
        "forwarded": "Forwarded to you?",
        "subscribe": "Subscribe",
        "space": " ",  # between the two: none in Chinese
    },
    "zh": {
        "summary": "本期要点",
        "unsubscribe": "退订",
        "view_in_browser": "在浏览器中查看",
        "why": "你收到这封邮件，是因为你订阅了 {name}。",
        "open": "打开",
        "watch": "在 {host} 观看视频",
        "forwarded": "朋友转发给你的？",
        "subscribe": "订阅",
        "space": "",
    },
}
SLOT_VALUE_MAX_BYTES = 600  # the wrap budget for one personalised value (URL or name)
LINE_LIMIT = 990  # RFC 5322 allows 998 octets per line; 8bit parts must stay under it
_SLOT = "zqmailerslot{}zq"  # a personal value
_CONTROL = "zqmailerctl{}zq"  # an {% if/elif/else/endif %}
_SLOT_RE = re.compile(r"zqmailer(?:slot|ctl)(\d+)zq")
_VALUE_RE = re.compile(r"zqmailerslot\d+zq")
_CONTROL_RE = re.compile(r"zqmailerctl(\d+)zq")
# a paragraph or line holding only conditions' markers: dropped, so a block {% if %} leaves no empty <p>
_CONTROL_PARAGRAPH = re.compile(r"<p\b[^>]*>\s*((?:zqmailerctl\d+zq\s*)+)</p>\s*")
_CONTROL_LINE = re.compile(r"(?:\A|(?<=\n\n))[ \t]*((?:zqmailerctl\d+zq[ \t]*)+)\n(?:[ \t]*\n)?")
# in a reflowed paragraph: no space left at a branch's start, no line of its own for a marker
_CONTROL_SPACE = re.compile(r"(?m)((?:^|[ \t])[ \t]*zqmailerctl\d+zq)[ \t]+")
_CONTROL_OWN_LINE = re.compile(r"\n[ \t]*((?:zqmailerctl\d+zq[ \t]*)+)(?=\n)")
PREHEADER_PAD = "\u034f\u200c\u00a0" * 40  # keeps the body's first words out of the inbox preview


@dataclass(frozen=True)
class Value:
    """A slot that is one personal value: its compiled expression, escaped for HTML, cut to the budget."""

    expr: Expr
    html: bool
    source: str

    def __call__(self, values: Mapping[str, str]) -> bytes:
        text = self.expr(values)
        data = (htmlmod.escape(text) if self.html else text).encode("utf-8")
        if len(data) > SLOT_VALUE_MAX_BYTES:  # cut at a character boundary, never inside one
            data = data[:SLOT_VALUE_MAX_BYTES].decode("utf-8", "ignore").encode("utf-8")
        return data

    def size(self) -> int:
        return 60


@dataclass(frozen=True)
class Choice:
    """A slot that is an {% if %}: the first branch whose condition holds (None: else), rendered once per
    issue like the rest and only picked per subscriber."""

    branches: tuple[tuple[Expr | None, Part], ...]

    def __call__(self, values: Mapping[str, str]) -> bytes:
        for condition, part in self.branches:
            if condition is None or truthy(condition(values)):
                return part.fill(values)
        return b""

    def size(self) -> int:
        return max(part.size() for _, part in self.branches)


Slot = Value | Choice


@dataclass(frozen=True)
class Part:
    """One body part split at its personalised slots: chunks[0] + v0 + chunks[1] + v1 + ..."""

    chunks: tuple[bytes, ...]
    slots: tuple[Slot, ...]
    html: bool
    eight_bit: bool  # False when some line could not be kept under 998 octets: quoted-printable then

    def fill(self, values: Mapping[str, str]) -> bytes:
        """The part's bytes for one subscriber (CRLF line endings, not yet transfer-encoded)."""
        chunks = self.chunks
        if not self.slots:
            return chunks[0]
        out = [chunks[0]]
        for i, slot in enumerate(self.slots, 1):
            out.append(slot(values))
            out.append(chunks[i])
        return b"".join(out)

    def as_file(self, values: Mapping[str, str]) -> bytes:
        """The part filled for one reader with LF line ends: as a file on disk or a terminal shows it."""
        return self.fill(values).replace(b"\r\n", b"\n")

    def values(self, values: Mapping[str, str]) -> list[bytes]:
        """The bytes that go into the slots for one subscriber (a condition's: its branch, filled)."""
        return [slot(values) for slot in self.slots]

    def every_branch(self) -> bytes:
        """The part with personal values empty and every branch of each condition in: what checks read."""
        out = [self.chunks[0]]
        for slot, chunk in zip(self.slots, self.chunks[1:], strict=True):
            if isinstance(slot, Choice):
                out += (part.every_branch() for _, part in slot.branches)
            out.append(chunk)
        return b"".join(out)

    def size(self) -> int:
        """Bytes, allowing 60 per personal value and the longest branch of each condition."""
        return sum(len(c) for c in self.chunks) + sum(slot.size() for slot in self.slots)


@dataclass(frozen=True)
class Issue:
    """A rendered issue: everything but the per-subscriber values is final."""

    post: Post
    issue_id: str
    subject: str
    preheader: str
    view_url: str
    html: Part
    text: Part
    findings: Findings
    lang: str
    images: ImageReport
    # keeps the inlined page in the data folder once a send has made it (mailer/inlined.py)
    keep_inlined: Callable[[], object]

    def sample_values(self, settings: Settings) -> dict[str, str]:
        """Slot values for the sample subscriber (preview, `render`)."""
        return {"name": settings.sample_name, "email": settings.sample_email}

    def html_size(self) -> int:
        """Bytes of the HTML part, allowing 60 per personal value: the figure Gmail's clipping goes by."""
        return self.html.size()


class _Slots:
    """Hands out slot markers while an issue renders: one per personal tag of the post and templates."""

    def __init__(self, templates_dir: Path) -> None:
        self.tags: list[Tag] = []
        self.templates_dir = templates_dir

    def marker(self, tag: Tag) -> Markup:
        self.tags.append(tag)
        return Markup((_SLOT if tag.kind == "value" else _CONTROL).format(len(self.tags) - 1))

    def field(self, name: str) -> Markup:
        """The marker of one value the message supplies (the unsubscribe URL)."""
        return self.marker(Tag("value", lambda values: values.get(name, ""), name))

    def mailer_tag_(self, opener: str, inner: str, line: int) -> Markup:
        """Called by a template tag that reads subscriber (see _PersonalTags)."""
        try:
            return self.marker(read_tag(opener, inner, bare_names=False))
        except FieldError as exc:
            raise PostError(f"{self.templates_dir}:{line}: template error: {opener}{inner}: {exc}") from None


class _PersonalTags(jinja2.ext.Extension):
    """Rewrites a template's `{{ subscriber... }}` and `{% if subscriber... %}` into slot markers."""

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        try:
            return rewrite_template(source, "subscriber.mailer_tag_")
        except FieldError as exc:
            raise jinja2.TemplateSyntaxError(exc.args[0], exc.args[1], name, filename) from None


@lru_cache(maxsize=4)
def _environment(templates_dir: Path) -> jinja2.Environment:
    if not (templates_dir / "email.html").exists():
        raise PostError(f"{templates_dir}: no email.html template there (check templates_dir)")
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        extensions=[_PersonalTags],
    )


@lru_cache(maxsize=4)
def _text_environment(templates_dir: Path) -> jinja2.Environment:
    """The text part's templates: no HTML escaping. Kept, as `_environment` is, so that email.txt is
    compiled once, not at every render (jinja2 still reloads a template whose file changed)."""
    return jinja2.Environment(
        loader=_environment(templates_dir).loader,
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        extensions=[_PersonalTags],
    )


def words_for(lang: str) -> dict[str, str]:
    """The footer and label words for the post's language (Chinese or English)."""
    return WORDS["zh" if lang.startswith("zh") else "en"]


def render_issue(post: Post, settings: Settings) -> Issue:
    """Render a post once: HTML with all CSS inlined, and the plain-text part, both with slots."""
    words = words_for(post.lang)
    findings = Findings()
    slots = _Slots(settings.templates_dir)
    tokens = markdown.parse(_mark_post(post, slots))
    label = embed_label(words["open"], words["watch"])
    body_html = sanitize(
        markdown.to_html(tokens),
        base_url=settings.base_url,
        embed_label=label,
        findings=findings,
        style_scope=".body-cell",  # email.html's cell around the post: its <style> rules reach nothing else
    )
    _absolute_links(tokens, settings.base_url)

    def clean(fragment: str) -> str:
        """Raw HTML as the HTML part keeps it, for the text part (an embed becomes its link there too)."""
        return sanitize(fragment, base_url=settings.base_url, embed_label=label, findings=Findings())

    body_text = to_text(tokens, clean)
    view_url = _view_url(settings, post)
    preheader = post.summary[0] if post.summary else _first_words(body_text, slots.tags)
    cover = ""
    if post.cover_image:
        from .sanitize import safe_url

        cover = safe_url(post.cover_image, settings.base_url, findings, image=True) or ""
    meta_line = " · ".join(x for x in (_date_text(post), post.category) if x)
    from_name = one_line(settings.list_name or settings.from_name)
    common = {
        "lang": post.lang,
        "title": post.title,
        "meta_line": meta_line,
        "summary": post.summary,
        "cover_image": cover,
        "view_url": view_url,
        "words": words,
        "from_name": from_name,
        "postal_address": one_line(settings.postal_address),
        "unsubscribe_url": slots.field("unsubscribe_url"),
        "subscribe_url": settings.subscribe_link,
        "subscriber": slots,
    }
    env = _environment(settings.templates_dir)
    css = (settings.templates_dir / "email.css").read_text(encoding="utf-8")
    media_css = (settings.templates_dir / "email-media.css").read_text(encoding="utf-8")
    try:
        page = env.get_template("email.html").render(
            common, body=Markup(body_html), css=Markup(css), media_css=Markup(media_css),
            preheader=preheader, preheader_pad=PREHEADER_PAD,
        )  # fmt: skip
        summary_lines = [line for item in post.summary for line in wrap(item, indent="  ", first="- ")]
        text = _text_environment(settings.templates_dir).get_template("email.txt").render(
            common, body=body_text, summary=summary_lines,
            title_rule="=" * min(text_width(post.title), WIDTH),
        )  # fmt: skip
    except jinja2.TemplateError as exc:
        where = f"{getattr(exc, 'filename', None) or settings.templates_dir}"
        line = getattr(exc, "lineno", None)
        raise PostError(f"{where}{':' + str(line) if line else ''}: template error: {exc}") from None
    keep = class_names(css + media_css)
    root, keep_inlined = inline_cached(
        Path(settings.data_dir) / INLINED, page, [*findings.styles, "\0", *sorted(keep)],
        lambda: inline_css(page, extra_css=findings.styles, keep_classes=keep),
    )  # fmt: skip
    images = fit_images(root, lambda urls: look_up(urls, settings.data_dir, offline=settings.offline))
    inlined = etree.tostring(root.getroottree(), method="html", encoding="unicode")
    return Issue(
        post=post,
        issue_id=post.issue_id,
        subject=post.title,
        preheader=preheader,
        view_url=view_url,
        html=_split(inlined, slots.tags, html=True),
        text=_split(_tidy_text(text), slots.tags, html=False),
        findings=findings,
        lang=post.lang,
        images=images,
        keep_inlined=keep_inlined,
    )


_SIZE_TAGS = {"img", "table", "td", "th"}
_SIZE_VALUE = re.compile(r"\d+%?")


class _ImportedUnused(types.ModuleType):
    """Stands in sys.modules for a module that a library imports but mailer's use of it never calls: the real
    one is imported at the first use of one of its names, if ever, and serves that and every later one."""

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


@lru_cache(maxsize=1)
def _premailer_class() -> type:
    """premailer and cssutils are imported here, on an inlined-page cache miss only (mailer/inlined.py).

    premailer imports requests for external style sheets, which allow_network=False never fetches: half of
    premailer's import time (requests, urllib3, charset_normalizer), spared by a stand-in."""
    sys.modules.setdefault("requests", _ImportedUnused("requests"))
    import cssutils
    from premailer import Premailer

    class _Premailer(Premailer):
        """Premailer that keeps the template's width/height attributes (Outlook goes by them), and that
        sets an image's align= from its CSS float without validating the style.

        Premailer copies CSS width/height into attributes and overwrites what is there, so
        `width: 100%` in a rule turned the cover's width="600" into width="100%" and added
        height="auto", which is not a valid attribute. New ones are only added where they are valid.

        Its own align_floating_images parses each image's style with cssutils' validation on, whatever
        disable_validation says: that compiles cssutils' large property regexes, 40% of the first
        inlining in a process (60 ms of CPU for the example post), for a value validation does not change.
        """

        def __init__(self, **options: Any) -> None:
            super().__init__(**options, align_floating_images=False)

        def transform(self, html: Any = None, pretty_print: bool = True, **kwargs: Any) -> Any:
            done = super().transform(html, pretty_print, **kwargs)
            for img in html.xpath("//img[@style]"):
                side = cssutils.parseStyle(img.attrib["style"], validate=False).float
                if side in ("right", "left"):
                    img.attrib["align"] = side
            return done

        def _style_to_basic_html_attributes(
            self, element: Any, style_content: Any, force: bool = False
        ) -> None:
            before = {key: element.attrib.get(key) for key in ("width", "height")}
            super()._style_to_basic_html_attributes(element, style_content, force=force)
            for key, old in before.items():
                new = element.attrib.get(key)
                if old is not None:
                    element.attrib[key] = old
                elif new is not None and (element.tag not in _SIZE_TAGS or not _SIZE_VALUE.fullmatch(new)):
                    del element.attrib[key]

    return _Premailer


def inline_css(
    page: str, *, extra_css: list[str], keep_classes: frozenset[str] = frozenset()
) -> etree._Element:
    """Move every CSS rule into style attributes with premailer; @media rules stay in <style>.

    Then what an element inherits anyway is dropped again (mailer.slim), and so are the post's class names
    that no rule left in <style> uses (the template's are kept): the size is Gmail's clipping budget.
    Boxes the post paints itself keep their colours in dark mode (mailer.dark).
    """
    from .dark import keep_own_colours  # with lxml.cssselect: on an inlined-page cache miss only

    premailer = _premailer_class()
    try:
        tree = etree.fromstring(page.strip(), etree.HTMLParser()).getroottree()
        premailer(
            css_text=extra_css or None,
            disable_link_rewrites=True,
            remove_classes=False,
            keep_style_tags=False,
            strip_important=False,
            allow_network=False,
            allow_loading_external_files=False,
            cssutils_logging_level=logging.CRITICAL,
            disable_validation=True,
            exclude_pseudoclasses=True,
        ).transform(tree.getroot())
    except Exception as exc:  # premailer raises bare lxml/cssutils errors
        raise PostError(f"inlining CSS failed: {exc}") from None
    links_look_like_links(tree.getroot())
    slim_styles(tree.getroot())
    keep_own_colours(tree.getroot())
    for style in tree.getroot().iter("style"):
        style.text = minify_css(style.text or "")
    drop_unused_classes(tree.getroot(), keep_classes)
    drop_layout_whitespace(tree.getroot())
    return tree.getroot()


def _split(content: str, tags: list[Tag], *, html: bool) -> Part:
    content = content.replace("\r\n", "\n")
    if "zqmailerctl" in content:  # without a condition's marker these passes only try every position
        if html:
            content = _CONTROL_PARAGRAPH.sub(r"\1", content)
        else:
            content = _CONTROL_LINE.sub(r"\1", content)
            content = _CONTROL_OWN_LINE.sub(r"\1", _CONTROL_SPACE.sub(r"\1", content))
    wrapped = fold(content, html=html, cost=_cost, limit=LINE_LIMIT)
    eight_bit = wrapped is not None
    content = (wrapped if wrapped is not None else content).replace("\n", "\r\n")
    pieces = _SLOT_RE.split(content)
    texts = [p.encode("utf-8") for p in pieces[0::2]]
    order = [tags[int(i)] for i in pieces[1::2]]
    pos = 0

    def block() -> tuple[Part, Tag | None]:
        """Chunks and slots up to the next elif/else/endif (returned) or the end (None)."""
        nonlocal pos
        chunks, slots = [texts[pos]], list[Slot]()
        while pos < len(order):
            tag = order[pos]
            pos += 1
            if tag.kind == "value":
                assert tag.expr is not None
                slots.append(Value(tag.expr, html, tag.source))
            elif tag.kind == "if":
                branches: list[tuple[Expr | None, Part]] = []
                condition = tag.expr
                while True:
                    body, stop = block()
                    branches.append((condition, body))
                    if stop is None or stop.kind == "endif":
                        break
                    condition = stop.expr if stop.kind == "elif" else None
                slots.append(Choice(tuple(branches)))
            else:
                return Part(tuple(chunks), tuple(slots), html, eight_bit), tag
            chunks.append(texts[pos])
        return Part(tuple(chunks), tuple(slots), html, eight_bit), None

    part, stray = block()
    if stray is not None:  # mark_post and the templates pair them: only HTML moved around them gets here
        raise PostError(f"{{% {stray.kind} %}} is out of place in the rendered issue (inside an HTML tag?)")
    return part


def _cost(text: str) -> int:
    if "zqmailer" not in text:  # most lines: no slot to look for
        return len(text.encode("utf-8"))
    plain = _SLOT_RE.sub("", text)
    return len(plain.encode("utf-8")) + SLOT_VALUE_MAX_BYTES * len(_VALUE_RE.findall(text))


def _mark_post(post: Post, slots: _Slots) -> str:
    """The post's body with its personal tags as slot markers; PostError naming the file and line."""
    for tag in ("{{", "{%"):
        if tag in post.title:
            raise PostError(
                f"{post.path}: title: {tag} in the title: the subject is the same for every reader"
                " (personal fields go in the body)"
            )
    try:
        return mark_post(post.body, slots.marker)
    except FieldError as exc:
        line = post.body_line + post.body.count("\n", 0, exc.args[1])
        raise PostError(
            f"{post.path}:{line}: {exc.args[0]} (personal fields: docs/writing.md; to show it as typed,"
            " put it in `backticks`)"
        ) from None


def _absolute_links(tokens: list[Token], base_url: str) -> None:
    """Resolve relative link and image URLs in the tokens too, so the text part's URLs work."""
    if not base_url:
        return
    for block in tokens:
        for tok in block.children or ():
            attr = {"link_open": "href", "image": "src"}.get(tok.type)
            url = str(tok.attrGet(attr) or "") if attr else ""
            if attr and url and not url.startswith("#") and not urlsplit(url).scheme:
                tok.attrSet(attr, urljoin(base_url, url))


def _tidy_text(text: str) -> str:
    """One blank line at most between blocks; a line's trailing space stays: format=flowed reads it."""
    tidy = re.sub(r"\n{3,}", "\n\n", flowed_part(text)).strip("\n")
    return tidy + "\n"


def _first_words(text: str, tags: list[Tag], limit: int = 140) -> str:
    """The preheader from the body: personal values and conditions kept, but none cut in half and no
    condition cut before its {% endif %}."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    flat = re.sub(r"zq\w*$", "", flat[: limit - 1])  # a marker cut short
    depth, cut = 0, len(flat)
    for m in _CONTROL_RE.finditer(flat):
        kind = tags[int(m.group(1))].kind
        if kind == "if":
            cut = m.start() if depth == 0 else cut
            depth += 1
        elif kind == "endif":
            depth -= 1
    return (flat if depth == 0 else flat[:cut]).rstrip() + "…"


def _date_text(post: Post) -> str:
    if post.date is None:
        return ""
    d = post.date
    if post.lang.startswith(("zh", "ja")):
        return f"{d.year}年{d.month}月{d.day}日"
    return f"{d.strftime('%B')} {d.day}, {d.year}"


def _view_url(settings: Settings, post: Post) -> str:
    if not settings.view_url:
        return ""
    return settings.view_url.format(
        web_url=settings.web_url.rstrip("/"),
        issue_id=post.issue_id,
        date=post.date.isoformat() if post.date else "",
    )
