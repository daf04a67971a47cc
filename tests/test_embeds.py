"""Video embeds: the video's own page, under a label that says where it plays, in HTML and text."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml.cssselect import CSSSelector

from mailer.embeds import watch_url
from tests.test_render import make_settings, render


@pytest.mark.parametrize(
    ("player", "page"),
    [
        (
            "https://v.qq.com/txp/iframe/player.html?vid=w0044q1kx9a",
            "https://v.qq.com/x/page/w0044q1kx9a.html",
        ),
        (
            "https://v.qq.com/iframe/player.html?vid=b3351zk1gya&tiny=0&auto=0",
            "https://v.qq.com/x/page/b3351zk1gya.html",
        ),
        ("https://www.youtube.com/embed/dQw4w9WgXcQ", "https://www.youtube.com/watch?v=dQw4w9WgXcQ"),
        (
            "https://www.youtube-nocookie.com/embed/dQw4w9WgXcQ?start=42",
            "https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=42s",
        ),
        ("https://player.vimeo.com/video/76979871?h=8272103f6e", "https://vimeo.com/76979871"),
        (
            "https://player.bilibili.com/player.html?bvid=BV1GJ411x7h7&page=1",
            "https://www.bilibili.com/video/BV1GJ411x7h7",
        ),
        (
            "https://player.bilibili.com/player.html?aid=170001&p=2",
            "https://www.bilibili.com/video/av170001?p=2",
        ),
        # no known form: left as it is
        ("https://v.qq.com/txp/iframe/player.html", "https://v.qq.com/txp/iframe/player.html"),
        (
            "https://www.youtube.com/embed/videoseries?list=PL1",
            "https://www.youtube.com/embed/videoseries?list=PL1",
        ),
        ("https://player.bilibili.com/player.html?bvid=x", "https://player.bilibili.com/player.html?bvid=x"),
        ("https://evil.example/embed/dQw4w9WgXcQ", "https://evil.example/embed/dQw4w9WgXcQ"),
        ("https://media.example.com/movie.swf", "https://media.example.com/movie.swf"),
    ],
)
def test_known_players_become_their_watch_page(player: str, page: str) -> None:
    assert watch_url(player) == page


POST = """---
title: {title}
lang: {lang}
---
{intro}

<iframe src="https://v.qq.com/txp/iframe/player.html?vid=w0044q1kx9a" allowfullscreen></iframe>

<iframe src="https://www.youtube-nocookie.com/embed/dQw4w9WgXcQ" frameborder="0"></iframe>

<iframe src="https://player.bilibili.com/player.html?bvid=BV1GJ411x7h7" title="{titled}"></iframe>

<iframe src="https://maps.example.org/embed?pb=1"></iframe>

{inline} <iframe src="https://player.vimeo.com/video/76979871"></iframe>
"""


@pytest.mark.parametrize(
    ("lang", "watch", "open_word"),
    [("zh", "▶ 在 {host} 观看视频", "▶ 打开"), ("en", "▶ Watch the video on {host}", "▶ Open")],
)
def test_embeds_read_where_the_video_plays_in_html_and_text(
    tmp_path: Path, lang: str, watch: str, open_word: str
) -> None:
    post = tmp_path / "video.md"
    words = {
        "zh": ("视频", "本周视频：", "发布会回放", "另见"),
        "en": ("Videos", "This week's videos:", "Launch", "Also"),
    }
    title, intro, titled, inline = words[lang]
    post.write_text(
        POST.format(title=title, lang=lang, intro=intro, titled=titled, inline=inline), encoding="utf-8"
    )
    rendered = render(post, make_settings(tmp_path))
    links = {a.get("href"): a.text_content() for a in CSSSelector("a.embed-link")(rendered.doc)}
    expected = {
        "https://v.qq.com/x/page/w0044q1kx9a.html": watch.format(host="v.qq.com"),
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ": watch.format(host="youtube.com"),
        "https://www.bilibili.com/video/BV1GJ411x7h7": f"{open_word}: {titled}",  # its own title
        "https://maps.example.org/embed?pb=1": f"{open_word}: maps.example.org",  # not a video site
        "https://vimeo.com/76979871": watch.format(host="vimeo.com"),
    }
    assert links == expected
    text = rendered.text
    lines = text.split("\n")
    for n, (href, label) in enumerate(expected.items(), 1):  # in the order they stand in the post
        assert f"{label}[{n}]" in " ".join(text.split()) and f"[{n}] {href}" in lines, label
    for part in (text, rendered.doc.text_content()):
        assert "player.html" not in part and "/embed/" not in part
