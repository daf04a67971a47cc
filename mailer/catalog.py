"""The words of every page a reader sees, in each language the pages speak: one place to read and translate.

Two languages, as the emails' footer words: Chinese (Simplified) for a list whose language starts with
"zh", English for every other. A page asks `words(lang)` for its catalog and writes `t["key"]` for plain
text or `t.say("key", name=value)` for a sentence with values in it: the sentence is escaped, and each value
escaped and set in <strong>, so a translation may put the values in any order. Which language a request
gets is decided in web.py (the `lang` setting, else the language of the newest archived issue).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import date

from markupsafe import Markup

PAGES: dict[str, dict[str, str]] = {
    "en": {
        "home.text": "This address handles unsubscribe links for {list}.",
        "unsubscribe.title": "Unsubscribe",
        "unsubscribe.confirm": "Stop sending {list} to {address}?",
        "unsubscribe.button": "Unsubscribe",
        "unsubscribed.title": "You are unsubscribed",
        "unsubscribed.text": "{address} will get no more {list}.",
        "unsubscribed.undo": "Changed your mind?",
        "resubscribe.button": "Resubscribe",
        "resubscribed.title": "You are subscribed again",
        "resubscribed.text": "{address} will get {list} again.",
        "bad_link.title": "This link does not work",
        "bad_link.text": "The unsubscribe link is incomplete or not valid. Please copy the whole link from"
        " the email, or reply to the email and ask to be removed.",
        "bad_request.title": "Bad request",
        "bad_request.length": "The request gives an invalid length for its body.",
        "bad_request.action": "Unknown action.",
        "too_large.title": "Request too large",
        "too_large.text": "The request body is too large.",
        "not_found.title": "Not found",
        "not_found.text": "There is nothing at this address.",
        "no_issue.text": "There is no such issue.",
        "method.title": "Method not allowed",
        "method.text": "This address does not take that method.",
        "busy.title": "Please try again",
        "busy.text": "Something is busy here. Please try again soon.",
        "error.title": "Something went wrong",
        "error.text": "Sorry, that did not work. Please try again.",
        "archive.title": "Past issues of {list}",
        "archive.empty": "No issues have been sent yet.",
        "archive.feed": "Feed of new issues",
        "archive.link": "Past issues",
        "subscribe.link": "Subscribe",
        "subscribe.invite": "Like what you read? Subscribe to {list}.",
    },
    "zh": {
        "home.text": "这里处理 {list} 的退订链接。",
        "unsubscribe.title": "退订",
        "unsubscribe.confirm": "不再向 {address} 发送 {list}？",
        "unsubscribe.button": "退订",
        "unsubscribed.title": "你已退订",
        "unsubscribed.text": "{address} 将不再收到 {list}。",
        "unsubscribed.undo": "改变主意了？",
        "resubscribe.button": "重新订阅",
        "resubscribed.title": "你已重新订阅",
        "resubscribed.text": "{address} 将再次收到 {list}。",
        "bad_link.title": "这个链接无效",
        "bad_link.text": "退订链接不完整或无效。请从邮件中复制完整的链接，或直接回复邮件要求退订。",
        "bad_request.title": "请求有误",
        "bad_request.length": "请求中注明的内容长度无效。",
        "bad_request.action": "未知的操作。",
        "too_large.title": "请求过大",
        "too_large.text": "请求的内容过大。",
        "not_found.title": "找不到页面",
        "not_found.text": "这个地址没有内容。",
        "no_issue.text": "没有这一期。",
        "method.title": "不支持的请求方式",
        "method.text": "这个地址不接受这种请求方式。",
        "busy.title": "请稍后再试",
        "busy.text": "服务器正忙，请稍后再试。",
        "error.title": "出错了",
        "error.text": "抱歉，操作没有成功，请再试一次。",
        "archive.title": "{list} 往期",
        "archive.empty": "还没有发出过任何一期。",
        "archive.feed": "新一期的订阅源",
        "archive.link": "往期",
        "subscribe.link": "订阅",
        "subscribe.invite": "喜欢这里的内容？订阅 {list}。",
    },
}
MONTHS = "January February March April May June July August September October November December".split()


def page_lang(lang: str) -> str:
    """The catalog for a language tag: "zh" for any Chinese (zh, zh-CN, zh-Hant), else "en"."""
    return "zh" if lang.strip().lower().startswith("zh") else "en"


@dataclass(frozen=True)
class Words:
    """One language's catalog, as the pages use it."""

    lang: str  # "en" or "zh": the key into PAGES and the pages' <html lang>

    def __getitem__(self, key: str) -> str:
        return PAGES[self.lang][key]

    def text(self, key: str, **values: str) -> str:
        """A sentence with its values filled in, as plain text (a <title>, a feed)."""
        return self[key].format(**values)

    def say(self, key: str, **values: str) -> Markup:
        """A sentence for HTML: escaped, each value escaped and set in <strong>."""
        strong = {name: f"<strong>{html.escape(value)}</strong>" for name, value in values.items()}
        return Markup(html.escape(self[key], quote=False).format(**strong))

    def date(self, day: date) -> str:
        """A date as readers of the language write it: 2026年2月9日, February 9, 2026."""
        if self.lang == "zh":
            return f"{day.year}年{day.month}月{day.day}日"
        return f"{MONTHS[day.month - 1]} {day.day}, {day.year}"


def words(lang: str) -> Words:
    """The page words for a language tag (see page_lang)."""
    return Words(page_lang(lang))
