"""The Atom feed of `mailer serve` stays XML whatever a post's title holds."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

from tests.publisher import WEB_URL
from tests.served import serving
from tests.test_archive import A, Archive, _post, _send

# U+FFFE and U+FFFF are not characters XML 1.0 allows (its Char production), escaped or not; one_line keeps
# them (they are not controls), YAML's "\uFFFE" makes them, and a title pasted from a broken file has them
TITLE = '---\ntitle: "Chips\\uFFFE weekly\\uFFFF"\ndate: 2026-02-10\nlang: en\n---\nHello.\n'


def test_a_title_with_characters_xml_forbids_leaves_the_feed_readable(tmp_path: Path) -> None:
    _send(tmp_path, _post(tmp_path, "2026-02-10.md", TITLE))
    with serving(tmp_path, {}, MAILER_DATA_DIR=str(tmp_path / "state"), MAILER_WEB_URL=WEB_URL) as served:
        answer = Archive(served.port, tmp_path).get("/feed.atom")
    assert answer.status == 200
    feed = ET.fromstring(answer.body)  # a feed reader's parser: one bad character and no issue is shown
    assert [entry.findtext(A + "title") for entry in feed.findall(A + "entry")] == ["Chips weekly"]
