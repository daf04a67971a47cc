"""Video embeds as links a reader can follow: the video's own page, under a label that says where it plays.

Mail clients run no <iframe>, so the sanitiser turns one into a link. A player URL
(`https://v.qq.com/txp/iframe/player.html?vid=...`) makes a poor link text and a poor page: where the player's
URL has a known form, the link goes to the watch page (YouTube, Vimeo, Bilibili, Tencent Video), and an
untitled embed reads "▶ Watch the video on v.qq.com" rather than showing the URL.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

_YOUTUBE = ("youtube.com", "youtube-nocookie.com")
_ID = re.compile(r"[\w-]{4,64}")
_VIDEO_SITES = (
    "youtube.com",
    "youtube-nocookie.com",
    "vimeo.com",
    "player.vimeo.com",
    "bilibili.com",
    "player.bilibili.com",
    "v.qq.com",
)
_VIDEO_FILE = re.compile(r"\.(?:mp4|m4v|webm|mov|ogv|m3u8)$", re.I)


def _youtube(host: str, path: str, query: dict[str, list[str]]) -> str | None:
    match = re.fullmatch(r"/embed/([\w-]{11})/?", path)  # a video id is 11 characters
    if (
        not match
        or match.group(1) == "videoseries"
        or host.removeprefix("www.").removeprefix("m.") not in _YOUTUBE
    ):
        return None
    start = query.get("start", [""])[0]
    return f"https://www.youtube.com/watch?v={match.group(1)}" + (f"&t={start}s" if start.isdigit() else "")


def _vimeo(host: str, path: str, query: dict[str, list[str]]) -> str | None:
    match = re.fullmatch(r"/video/(\d{1,12})/?", path)
    return f"https://vimeo.com/{match.group(1)}" if host == "player.vimeo.com" and match else None


def _bilibili(host: str, path: str, query: dict[str, list[str]]) -> str | None:
    if host != "player.bilibili.com" or path != "/player.html":
        return None
    bvid, aid = query.get("bvid", [""])[0], query.get("aid", [""])[0]
    video = bvid if re.fullmatch(r"BV\w{10}", bvid) else f"av{aid}" if aid.isdigit() else ""
    page = query.get("p", [""])[0]
    if not video:
        return None
    more = f"?p={page}" if page.isdigit() and int(page) > 1 else ""
    return f"https://www.bilibili.com/video/{video}{more}"


def _tencent(host: str, path: str, query: dict[str, list[str]]) -> str | None:
    vid = query.get("vid", [""])[0]
    if host != "v.qq.com" or not path.endswith("/player.html") or not _ID.fullmatch(vid):
        return None
    return f"https://v.qq.com/x/page/{vid}.html"


_PLAYERS = (_youtube, _vimeo, _bilibili, _tencent)


def watch_url(url: str) -> str:
    """The watch page of a known video player URL; any other URL as it is."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    for player in _PLAYERS:
        page = player(parts.netloc.lower(), parts.path, query)
        if page:
            return page
    return url


def _plays_video(url: str) -> bool:
    """A page of a video site, or a video file."""
    parts = urlsplit(url)
    return parts.netloc.lower().removeprefix("www.") in _VIDEO_SITES or bool(_VIDEO_FILE.search(parts.path))


def embed_label(open_word: str, watch_words: str) -> Callable[[str], str]:
    """The label of an embed's link: its title if it has one, else where it plays ("▶ Watch the video on
    v.qq.com", "▶ 在 v.qq.com 观看视频"), never the player's URL."""

    def label(title_or_url: str) -> str:
        if not title_or_url.startswith(("http://", "https://")):
            return f"▶ {open_word}: {title_or_url}"
        host = urlsplit(title_or_url).netloc.lower().removeprefix("www.")
        if _plays_video(title_or_url):
            return "▶ " + watch_words.format(host=host)
        return f"▶ {open_word}: {host}"

    return label
