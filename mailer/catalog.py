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
        "home.text": "Past issues of {list}, and its subscribe and unsubscribe pages, are here.",
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
        "signup.title": "Subscribe",
        "signup.invite": "Get {list} by email. We will send you a link to confirm.",
        "signup.email": "Email address",
        "signup.name": "Name (optional)",
        "signup.honeypot": "Leave this empty",
        "signup.button": "Subscribe",
        "signup.sent.title": "Check your inbox",
        "signup.sent.text": "If the address can get {list}, a message with a confirmation link is on its way"
        " to it.",
        "signup.sent.more": "Open it and follow the link to finish. Nothing there? Look in the spam folder,"
        " or try again in a few minutes.",
        "signup.confirm.title": "Confirm",
        "signup.confirm.text": "Get {list} at {address}?",
        "signup.confirm.button": "Confirm my subscription",
        "signup.confirmed.title": "You are subscribed",
        "signup.confirmed.text": "{address} will get {list}. Every issue has a link to unsubscribe.",
        "signup.stale.title": "Sign up again",
        "signup.stale.text": "This link is no longer valid: a newer one was sent to {address}, or the address"
        " left the list since. Please use the newest link, or sign up again.",
        "signup.again": "Sign up again",
        "signup.no_address.title": "No address",
        "signup.no_address.text": "Please type your email address.",
        "signup.bad_address.title": "Not an email address",
        "signup.bad_address.text": "{address} is not an email address that can be mailed. Please check it and"
        " try again.",
        "signup.no_list.title": "No such list",
        "signup.no_list.text": "This form names a list that takes no signups here.",
        "signup.limit.title": "Too many requests",
        "signup.limit.text": "There have been too many signups from your network. Please try again later.",
        "signup.bad_link.title": "This link does not work",
        "signup.bad_link.text": "The confirmation link is incomplete or not valid. Please copy the whole link"
        " from the email, or sign up again.",
        "signup.expired.title": "This link has expired",
        "signup.expired.text": "Confirmation links work for {hours} hours. Please sign up again: a new link"
        " will be mailed.",
    },
    "zh": {
        "home.text": "这里有 {list} 的往期内容，以及订阅和退订页面。",
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
        "signup.title": "订阅",
        "signup.invite": "通过邮件接收 {list}。我们会发一个确认链接给你。",
        "signup.email": "邮箱地址",
        "signup.name": "称呼（可选）",
        "signup.honeypot": "请留空",
        "signup.button": "订阅",
        "signup.sent.title": "请查收邮件",
        "signup.sent.text": "如果这个地址可以接收 {list}，一封带确认链接的邮件正在发往它。",
        "signup.sent.more": "打开邮件并点击链接即可完成订阅。没有收到？"
        "请查看垃圾邮件文件夹，或过几分钟再试。",
        "signup.confirm.title": "确认订阅",
        "signup.confirm.text": "用 {address} 接收 {list}？",
        "signup.confirm.button": "确认订阅",
        "signup.confirmed.title": "订阅成功",
        "signup.confirmed.text": "{address} 将收到 {list}。每一期都有退订链接。",
        "signup.stale.title": "请重新订阅",
        "signup.stale.text": "这个链接已失效：{address} 已收到更新的链接，或此后已退订。"
        "请使用最新的链接，或重新订阅。",
        "signup.again": "重新订阅",
        "signup.no_address.title": "没有填写地址",
        "signup.no_address.text": "请填写你的邮箱地址。",
        "signup.bad_address.title": "邮箱地址无效",
        "signup.bad_address.text": "{address} 不是可以接收邮件的邮箱地址。请检查后重试。",
        "signup.no_list.title": "没有这个列表",
        "signup.no_list.text": "这个表单指定的列表不接受订阅。",
        "signup.limit.title": "请求过多",
        "signup.limit.text": "你所在网络的订阅请求过多，请稍后再试。",
        "signup.bad_link.title": "这个链接无效",
        "signup.bad_link.text": "确认链接不完整或无效。请从邮件中复制完整的链接，或重新订阅。",
        "signup.expired.title": "这个链接已过期",
        "signup.expired.text": "确认链接在 {hours} 小时内有效。请重新订阅，我们会发送新的链接。",
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
