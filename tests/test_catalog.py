"""The words of the reader pages (mailer/catalog.py): each language has every sentence, with its values."""

from __future__ import annotations

import string
from datetime import date

import pytest

from mailer.catalog import PAGES, words


def _values(sentence: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(sentence) if name is not None}


@pytest.mark.parametrize("lang", sorted(PAGES))
def test_every_language_has_every_sentence_with_the_same_values(lang: str) -> None:
    assert PAGES[lang].keys() == PAGES["en"].keys()
    for key, sentence in PAGES[lang].items():
        assert _values(sentence) == _values(PAGES["en"][key]), key


@pytest.mark.parametrize(
    ("tag", "lang"),
    [
        ("zh", "zh"),
        ("zh-CN", "zh"),
        ("ZH-hant", "zh"),
        ("en", "en"),
        ("ja", "en"),
        ("", "en"),
        ("fr-CA", "en"),
    ],
)
def test_any_chinese_tag_gets_the_chinese_pages(tag: str, lang: str) -> None:
    assert words(tag).lang == lang


def test_values_are_escaped_and_strong_in_any_order() -> None:
    zh = words("zh").say("unsubscribe.confirm", list="<b>&", address="a@b.c")
    assert zh == "不再向 <strong>a@b.c</strong> 发送 <strong>&lt;b&gt;&amp;</strong>？"
    assert (
        words("en").text("unsubscribe.confirm", list="<b>", address="a@b.c") == "Stop sending <b> to a@b.c?"
    )


def test_dates_as_each_language_writes_them() -> None:
    assert words("zh").date(date(2026, 2, 9)) == "2026年2月9日"
    assert words("en").date(date(2026, 2, 9)) == "February 9, 2026"
