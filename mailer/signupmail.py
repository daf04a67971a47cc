"""The two messages a signup makes: the confirmation (its link) and the optional welcome (a post).

Both are real emails, as an issue is: From, To, Subject, Date, Message-ID and List-Id, a text and an HTML
part, DKIM-signed when DKIM is set. The confirmation is written here, in the list's language; the
welcome is the post `signup_welcome` names, rendered once like any issue and personalised per reader
(with its unsubscribe link: the reader is subscribed by then).
"""

from __future__ import annotations

import binascii
import html
import secrets
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING

from .headers import encode_text, mailbox, one_line

if TYPE_CHECKING:
    from .config import Settings
    from .message import MessageFactory
    from .tokens import Keyring

WORDS = {
    "en": {
        "subject": "Confirm your subscription to {list}",
        "intro": "Please confirm that you want to get {list} at {address}:",
        "button": "Confirm my subscription",
        "expiry": "The link works for {hours} hours.",
        "ignore": "If you did not ask for this, ignore this message: you will not be subscribed,"
        " and you will get no more mail from us.",
    },
    "zh": {
        "subject": "请确认订阅 {list}",
        "intro": "请确认你希望用 {address} 接收 {list}：",
        "button": "确认订阅",
        "expiry": "链接在 {hours} 小时内有效。",
        "ignore": "如果你没有申请订阅，请忽略这封邮件：你不会被订阅，也不会再收到我们的邮件。",
    },
}

# The confirmation's HTML part: one card and a button, inline styles only (mail programs drop <style>).
HTML = """<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{subject}</title></head>
<body style="margin:0;padding:24px;background:#f4f4f5;font:16px/1.5 system-ui,sans-serif;color:#18181b">
<div style="max-width:32rem;margin:0 auto;padding:24px;background:#ffffff;border-radius:12px">
<p>{intro}</p>
<p><a href="{url}" style="display:inline-block;padding:10px 20px;background:#18181b;color:#ffffff;
border-radius:8px;text-decoration:none">{button}</a></p>
<p style="font-size:14px;color:#52525b;word-break:break-all">{url}</p>
<p>{expiry}</p>
<p style="font-size:14px;color:#52525b">{ignore}</p>
</div></body></html>
"""


def _qp(text: str) -> bytes:
    return binascii.b2a_qp(text.encode("utf-8"), header=False).replace(b"\n", b"\r\n")


class Letters:
    """Builds the signup messages; the welcome post is rendered once, when the app starts."""

    def __init__(self, settings: Settings, keys: Callable[[], Keyring], lang: Callable[[], str]) -> None:
        self.settings = settings
        self.lang = lang
        self.list_name = one_line(settings.list_name or settings.from_name)
        from .dkimsign import dkim_signer

        self.dkim = dkim_signer(settings)
        self.welcome_factory: MessageFactory | None = None
        if settings.signup_welcome:
            from .message import MessageFactory
            from .post import load_post
            from .render import render_issue

            issue = render_issue(load_post(Path(settings.signup_welcome)), settings)
            scope = settings.token_scope
            self.welcome_factory = MessageFactory(
                issue, settings, sign=lambda email: keys().sign(email, scope), dkim=self.dkim
            )

    def confirmation(self, address: str, url: str) -> bytes:
        """The confirmation message to `address` with its link, text and HTML."""
        s = self.settings
        lang = "zh" if self.lang().lower().startswith("zh") else "en"
        words = WORDS[lang]
        values = {"list": self.list_name, "address": address, "hours": f"{s.signup_confirm_hours:g}"}
        subject = words["subject"].format(**values)
        text = "\n\n".join(
            [words["intro"].format(**values), url, words["expiry"].format(**values), words["ignore"]]
        )
        strong = {k: f"<strong>{html.escape(v)}</strong>" for k, v in values.items()}
        page = HTML.format(
            lang=lang,
            subject=html.escape(subject),
            intro=html.escape(words["intro"]).format(**strong),
            url=html.escape(url),
            button=html.escape(words["button"]),
            expiry=html.escape(words["expiry"].format(**values)),
            ignore=html.escape(words["ignore"]),
        )
        boundary = "==mailer-" + secrets.token_hex(12)
        head = [
            f"From: {mailbox(s.from_name, s.from_email)}",
            f"To: {address}",
            f"Subject: {encode_text(subject)}",
            f"Date: {formatdate(localtime=True)}",
            f"Message-ID: <signup.{secrets.token_hex(12)}@{s.sender_domain}>",
            f"List-Id: {mailbox(self.list_name, s.effective_list_id)}",
            "Auto-Submitted: auto-generated",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/alternative; boundary="{boundary}"',
        ]
        parts = b"".join(
            f'\r\n--{boundary}\r\nContent-Type: {kind}; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode("ascii")
            + _qp(body)
            for kind, body in (("text/plain", text + "\n"), ("text/html", page))
        )
        message = "".join(line + "\r\n" for line in head).encode("ascii") + parts
        message += f"\r\n--{boundary}--\r\n".encode("ascii")
        return self.dkim(message) if self.dkim is not None else message

    def welcome(self, address: str, name: str) -> bytes:
        """The welcome post as this reader's message (only called when signup_welcome is set)."""
        if self.welcome_factory is None:
            raise ValueError("no welcome message is set (signup_welcome)")
        return self.welcome_factory.build(address, name)
