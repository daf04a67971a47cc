"""Pre-send checks of a rendered issue (what would clip, break or hurt delivery), for `check` and preview."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from lxml import etree
from lxml import html as lhtml

from .config import Settings
from .console import Console
from .errors import MailerError
from .linebreak import text_width
from .markdown import parse
from .post import load_post
from .render import Issue, render_issue
from .schedule import require_post

Level = Literal["error", "warning", "ok"]
SUBJECT_MAX_WIDTH = 78  # columns; inboxes cut subjects off around here (CJK characters count two)
NEAR_CLIP = 0.9  # warn when the HTML is within 10% of Gmail's clipping size
RESERVED_DOMAINS = ("example.com", "example.net", "example.org", "localhost")
RESERVED_TLDS = (".example", ".test", ".invalid", ".localhost", ".local")
DEFAULT_POSTAL_ADDRESS = Settings().postal_address
# checks about the configuration rather than the post: `mailer render` does not repeat them
SETTINGS_CODES = frozenset({"from-address", "unsubscribe-url", "postal-address", "dkim"})
# the checks that can be errors, so stop a send; `send --skip-check NAME` lets one of them through on purpose
BLOCKING_CODES = (
    "subject",
    "html-size",
    "relative-urls",
    "from-address",
    "unsubscribe-url",
    "postal-address",
)


@dataclass(frozen=True)
class Check:
    """One finding: `error` would hurt delivery (check exits 1), `warning` deserves a look, `ok` passed."""

    level: Level
    code: str
    message: str
    fix: str = ""  # how to put an error right, for the list that stops a send


class ChecksFailed(MailerError):
    """A send refused before its first message: each failed check with its fix, and how to skip it."""

    def __init__(self, post: object, failed: list[Check], also: str = "") -> None:
        """`also`: why the post would be refused next, once the checks pass (its date), said now rather
        than after the publisher has skipped or fixed each check."""
        self.failed = failed
        self.also = also
        lines = [f"{post}: not sending: {len(failed)} pre-send check(s) failed"]
        for c in failed:
            lines.append(f"  {c.code}: {c.message}")
            if c.fix:
                lines.append(f"    fix: {c.fix}")
        names = " ".join(f"--skip-check {c.code}" for c in failed if c.code in BLOCKING_CODES)
        if names:  # a key that cannot sign (dkim) is no choice to make: only its fix lets the send go
            lines.append(f"  To send anyway, skip each on purpose: {names}")
        if also:
            lines.append(f"  And the post's date: {also}")
        super().__init__("\n".join(lines))

    def details(self) -> dict[str, object]:
        found: dict[str, object] = {"failed_checks": [dataclasses.asdict(c) for c in self.failed]}
        if self.also:
            found["also_refused"] = self.also
        return found


def blocking(checks: list[Check], skip: frozenset[str] | set[str] = frozenset()) -> list[Check]:
    """The errors that stop a send: every error but those skipped by name."""
    return [c for c in checks if c.level == "error" and c.code not in skip]


def check_issue(issue: Issue, settings: Settings) -> list[Check]:
    """Run every pre-send check on a rendered issue, in a stable order, passed checks included."""
    live = bool(settings.smtp_host)  # else mail goes to the local outbox: setup problems are only warnings
    page = _parse(issue)  # personal values left empty, every branch of a condition in
    checks = [
        _subject(issue),
        _size(issue, settings),
        _summary(issue),
        *_removed(issue),
        _images(issue, page),
        *_image_sizes(issue),
        *_cover(issue, page),
        _relative(issue),
        _links(issue, page),
        _literal_markdown(page),
        _unclosed_html(issue),
        _from_address(settings, live),
        _unsubscribe_url(settings, live),
        _postal_address(settings, live),
        *_dkim(settings, live),
    ]
    return checks


def check_post(
    target: Path, settings: Settings, console: Console, *, quiet: bool
) -> tuple[Path, list[Check]]:
    """`mailer check`: the checks of the post in `target` (a folder: today's), one line each on the console
    (the failed ones alone when `quiet`), then the count of errors and warnings."""
    post = require_post(target, settings, console)
    checks = check_issue(render_issue(load_post(post), settings), settings)
    for c in checks:
        if not (quiet and c.level == "ok"):
            fix = f" (fix: {c.fix})" if c.fix and c.level == "error" else ""
            console.result(f"{post}: {c.level}: {c.code}: {c.message}{fix}")
    errors = sum(c.level == "error" for c in checks)
    warnings = sum(c.level == "warning" for c in checks)
    console.say(f"{post}: {errors} error(s), {warnings} warning(s)")
    return post, checks


def post_warnings(issue: Issue, settings: Settings) -> list[str]:
    """What a writer should know about the post before sending: the checks that did not pass, but not the
    setup's (from address, links, DKIM: `mailer check` reports those)."""
    return [
        f"{issue.post.path}: {c.message}"
        for c in check_issue(issue, settings)
        if c.level != "ok" and c.code not in SETTINGS_CODES
    ]


def has_errors(checks: list[Check]) -> bool:
    """Whether any check failed badly enough that sending should wait."""
    return any(c.level == "error" for c in checks)


def _parse(issue: Issue) -> lhtml.HtmlElement | None:
    raw = issue.html.every_branch()
    try:
        return lhtml.document_fromstring(raw.decode("utf-8", "replace"))
    except (etree.ParserError, ValueError):
        return None


def _short(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(item[:80] for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _subject(issue: Issue) -> Check:
    subject = issue.subject.strip()
    if not subject:
        return Check(
            "error",
            "subject",
            "the subject is empty",
            "give the post a `title:` or start it with `# A heading`",
        )
    width = text_width(subject)
    if width > SUBJECT_MAX_WIDTH:
        return Check(
            "warning",
            "subject",
            f"the subject is {width} columns wide; inboxes cut it off after about {SUBJECT_MAX_WIDTH} "
            "(CJK characters count two)",
        )
    return Check("ok", "subject", f"the subject is {width} columns wide")


def _size(issue: Issue, settings: Settings) -> Check:
    size, limit = issue.html_size(), settings.clip_warn_bytes
    shown = f"the HTML is {size / 1024:.0f} KB"
    if size > limit:
        return Check(
            "error",
            "html-size",
            f"{shown}, {-(-(size - limit) // 1024)} KB too many: Gmail clips messages over "
            f"{limit // 1024} KB and hides the rest, the unsubscribe link included",
            "shorten the post (or move long parts to the web and link to them)",
        )
    if size > limit * NEAR_CLIP:
        return Check("warning", "html-size", f"{shown}, close to Gmail's {limit // 1024} KB clipping size")
    return Check("ok", "html-size", f"{shown} (Gmail clips at {limit // 1024} KB)")


def _summary(issue: Issue) -> Check:
    if not issue.post.summary:
        return Check(
            "warning",
            "summary",
            "no summary in the front matter: the inbox preview shows the first words of the body",
        )
    return Check("ok", "summary", f"summary of {len(issue.post.summary)} point(s), also the inbox preview")


def _removed(issue: Issue) -> list[Check]:
    removed = sorted(set(issue.findings.removed))
    if not removed:
        return []
    return [Check("warning", "removed", f"removed what email clients do not run: {', '.join(removed)}")]


def _images(issue: Issue, page: lhtml.HtmlElement | None) -> Check:
    missing = list(issue.findings.images_without_alt)
    if page is not None:
        for img in page.iter("img"):
            if img.get("alt") is None:
                missing.append(img.get("src") or "(no src)")
    if missing:
        return Check(
            "warning",
            "image-alt",
            f"{len(missing)} image(s) without alt text (shown when images are blocked): {_short(missing)}",
        )
    return Check("ok", "image-alt", "every image has alt text")


def _image_sizes(issue: Issue) -> list[Check]:
    """One line per image left without width and height, and why: Outlook shows it at its full size."""
    report = issue.images
    checks = [
        Check("warning", "image-size", f"{src[:120]}: size unknown ({why}); Outlook may show it full size")
        for src, why in report.unknown.items()
    ]
    if report.cache_problem:
        checks.append(Check("warning", "image-size", report.cache_problem))
    if not checks:
        checks.append(Check("ok", "image-size", f"all {report.sized} image(s) have a width and height"))
    return checks


def _cover(issue: Issue, page: lhtml.HtmlElement | None) -> list[Check]:
    if not issue.post.cover_image or page is None:
        return []
    covers = [img for img in page.iter("img") if "cover" in (img.get("class") or "").split()]
    if not covers:
        return []
    if not (covers[0].get("alt") or "").strip():
        return [Check("warning", "cover-alt", "the cover image has no alt text")]
    return [Check("ok", "cover-alt", "the cover image has alt text")]


def _relative(issue: Issue) -> Check:
    relative = issue.findings.relative_urls
    if relative:
        return Check(
            "error",
            "relative-urls",
            f"{len(relative)} relative link(s) or image(s) that no inbox can open (set base_url): "
            f"{_short(relative)}",
            "set base_url to the site the post's links are relative to, or make them absolute",
        )
    return Check("ok", "relative-urls", "no relative links or images")


def _links(issue: Issue, page: lhtml.HtmlElement | None) -> Check:
    odd = [f"removed {url}" for url in issue.findings.bad_links]
    relative = set(issue.findings.relative_urls)
    count = 0
    if page is not None:
        for a in page.iter("a"):
            href = (a.get("href") or "").strip()
            if not href or href in relative:
                continue
            count += 1
            scheme = urlsplit(href).scheme.lower()
            if href.startswith("#"):
                odd.append(f"{href} (in-page links do not work in most inboxes)")
            elif scheme not in ("http", "https", "mailto"):
                odd.append(href)
    if odd:
        return Check("warning", "links", f"{len(odd)} link(s) that are not http(s) or mailto: {_short(odd)}")
    return Check("ok", "links", f"all {count} link(s) are http(s) or mailto")


_LITERAL = re.compile(r"\*\*(?=\S)|\]\(|\[\^")
_TAG = re.compile(r"<!--.*?-->|<(/?)([A-Za-z][\w-]*)\b[^>]*?(/?)>", re.S)
# void, or closed by whatever comes next: leaving them open swallows nothing
_SELF_CLOSING = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr",
    "p", "li", "td", "th", "tr", "option", "dt", "dd",
}  # fmt: skip


def _body_text(page: lhtml.HtmlElement | None) -> str:
    cells = page.xpath("//td[contains(concat(' ', @class, ' '), ' body-cell ')]") if page is not None else []
    return " ".join(cells[0].text_content().split()) if cells else ""


def _around(text: str, match: re.Match[str]) -> str:
    return text[max(0, match.start() - 20) : match.end() + 20].strip()


def _literal_markdown(page: lhtml.HtmlElement | None) -> Check:
    """Markdown shown as typed: inside raw HTML, a link the parser did not take, a footnote with no note."""
    text = _body_text(page)
    found = [_around(text, m) for m in _LITERAL.finditer(text)]
    if found:
        return Check(
            "warning",
            "literal-markdown",
            f"{len(found)} piece(s) of markdown shown as typed (`**`, `](`, `[^`; markdown inside raw HTML "
            f"is not rendered): {_short(found)}",
        )
    return Check("ok", "literal-markdown", "no markdown left as typed")


def _unclosed_html(issue: Issue) -> Check:
    """Raw HTML opened and never closed: everything after it, footer styles included, ends up inside it."""
    raw = "".join(t.content for t in parse(issue.post.body) if t.type == "html_block") + "".join(
        c.content
        for t in parse(issue.post.body)
        if t.type == "inline"
        for c in t.children or ()
        if c.type == "html_inline"
    )
    open_tags: list[str] = []
    for m in _TAG.finditer(raw):
        closing, name, self_closed = m.group(1), (m.group(2) or "").lower(), m.group(3)
        if not name or name in _SELF_CLOSING or self_closed:
            continue
        if not closing:
            open_tags.append(name)
        elif name in open_tags:
            del open_tags[len(open_tags) - 1 - open_tags[::-1].index(name) :]
    if open_tags:
        shown = ", ".join(f"<{name}>" for name in open_tags)
        return Check(
            "warning",
            "unclosed-html",
            f"raw HTML left open: {shown}; everything after it is inside it (close it, or end the block "
            "with a blank line and its closing tag)",
        )
    return Check("ok", "unclosed-html", "every raw HTML tag is closed")


def _reserved(host: str) -> bool:
    host = host.lower().rstrip(".")
    return (
        host in RESERVED_DOMAINS
        or host.endswith(RESERVED_TLDS)
        or any(host.endswith("." + d) for d in RESERVED_DOMAINS)
    )


def _from_address(settings: Settings, live: bool) -> Check:
    domain = settings.sender_domain
    level: Level = "error" if live else "warning"
    problem = ""
    if domain.startswith("[") or _is_ip(domain):
        problem = "is an IP address; receiving servers reject or junk mail from it"
    elif "." not in domain:
        problem = "has no top-level domain"
    elif _reserved(domain):
        problem = "is a reserved example domain: no one can receive mail from it (set from_email)"
    if problem:
        suffix = "" if live else " (fine for the local outbox)"
        return Check(
            level,
            "from-address",
            f"from_email {settings.from_email}: {domain} {problem}{suffix}",
            "set from_email (mailer.toml or MAILER_FROM_EMAIL) to an address at a domain you send mail from",
        )
    return Check("ok", "from-address", f"sending as {settings.from_email}")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _unsubscribe_url(settings: Settings, live: bool) -> Check:
    parts = urlsplit(settings.web_url)
    host = (parts.hostname or "").lower()
    level: Level = "error" if live else "warning"
    suffix = "" if live else " (fine for the local outbox)"
    private = host in ("localhost", "") or _reserved(host)
    if _is_ip(host):
        address = ipaddress.ip_address(host)
        private = address.is_private or address.is_loopback or address.is_link_local
    if private:
        return Check(
            level,
            "unsubscribe-url",
            f"web_url {settings.web_url} is not reachable by subscribers: their unsubscribe links "
            f"will not work{suffix}",
            "set web_url to the public https:// address where `mailer serve` answers",
        )
    if parts.scheme != "https":
        return Check(
            "warning",
            "unsubscribe-url",
            f"web_url {settings.web_url} is not https; Gmail and Yahoo expect https one-click unsubscribe",
        )
    return Check("ok", "unsubscribe-url", f"unsubscribe links point to {settings.web_url}")


def _postal_address(settings: Settings, live: bool) -> Check:
    if not settings.postal_address.strip() or settings.postal_address == DEFAULT_POSTAL_ADDRESS:
        suffix = "" if live else " (fine for the local outbox)"
        # `mailer init` writes the placeholder into mailer.toml: "not set" sent one to a line that is set
        what = "is still the placeholder" if settings.postal_address.strip() else "is not set"
        return Check(
            "error" if live else "warning",
            "postal-address",
            f"postal_address {what}: the footer needs a real one (CAN-SPAM){suffix}",
            "set postal_address to the sender's real postal address",
        )
    return Check("ok", "postal-address", "the footer has a postal address")


def _dkim(settings: Settings, live: bool) -> list[Check]:
    if not settings.dkim_key_file:
        if not live:
            return []
        return [Check("warning", "dkim", "no DKIM signing (set dkim_key_file): inboxes junk unsigned mail")]
    from .dkimsign import dkim_signer

    try:
        dkim_signer(settings)  # the key read and parsed as a send would, so that "ok" means it signs
    except MailerError as exc:
        fix = "an unencrypted RSA key of 2048 bits in PEM (docs/configuration.md), or no dkim_key_file"
        return [Check("error", "dkim", str(exc), fix)]
    domain = (settings.dkim_domain or settings.sender_domain).lower()
    sender = settings.sender_domain
    if sender != domain and not sender.endswith("." + domain):
        return [
            Check(
                "warning",
                "dkim",
                f"DKIM signs for {domain} but mail is from {sender}: DMARC alignment fails",
            )
        ]
    return [Check("ok", "dkim", f"DKIM-signed for {domain}")]
