"""Make a post's HTML safe for email: what no mail client runs is removed or turned into a link."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from lxml import etree
from lxml import html as lhtml

DROP = {
    "script", "noscript", "style", "meta", "link", "base", "head", "title", "template", "svg", "math",
    "input", "button", "select", "textarea", "option", "optgroup", "datalist", "output", "applet",
    "frame", "frameset", "param", "source", "track", "canvas", "dialog", "portal",
}  # fmt: skip
EMBEDS = {"iframe", "embed", "object", "video", "audio"}
# An allow-list: any other tag (<form>, <section>, <font>, custom elements, and <plaintext>, <xmp>,
# <noembed>, <listing>, which switch a browser to raw text up to the end of the page, footer included)
# goes, and its content stays as text.
ALLOWED_TAGS = {
    "a", "abbr", "b", "big", "blockquote", "br", "caption", "cite", "code", "col", "colgroup", "dd", "del",
    "dfn", "div", "dl", "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li",
    "mark", "ol", "p", "pre", "q", "s", "samp", "small", "span", "strike", "strong", "sub", "sup", "table",
    "tbody", "td", "tfoot", "th", "thead", "time", "tr", "tt", "u", "ul", "var",
}  # fmt: skip
ALLOWED_ATTRS = {
    "href", "src", "alt", "title", "width", "height", "class", "style", "align", "valign", "colspan",
    "rowspan", "border", "cellpadding", "rules", "cellspacing", "bgcolor", "role", "dir", "lang", "start",
    "type", "id", "name", "target", "rel", "scope", "headers", "abbr", "datetime", "cite",
}  # fmt: skip
SAFE_SCHEMES = {"http", "https", "mailto", "tel"}
COLUMN = 552  # px: the body column of email.html (600 minus 24 px padding each side)
# void in HTML5, but libxml2's HTML 4 parser nests everything that follows inside them
NESTING_VOIDS = ("embed", "source", "track", "wbr", "keygen")
_CSS_DANGER = re.compile(r"expression\(|javascript:|vbscript:|behaviou?r:|-moz-binding|@import", re.I)
_CSS_SPACE = re.compile(r"[\s\x00-\x1f\x7f]+")
_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|$)", re.S)
_URL_JUNK = re.compile(r"[\x00-\x20\x7f]+")


@dataclass
class Findings:
    """What sanitising changed or noticed, for `mailer check` and the preview's check panel."""

    removed: list[str] = field(default_factory=list)
    images_without_alt: list[str] = field(default_factory=list)
    relative_urls: list[str] = field(default_factory=list)
    bad_links: list[str] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)


def safe_url(url: str, base_url: str, findings: Findings, *, image: bool = False) -> str | None:
    """Return an absolute, safe URL, or None when the URL must go (javascript:, data:, ...)."""
    cleaned = _URL_JUNK.sub("", url)
    if not cleaned:
        return None
    if cleaned.startswith("#") and not image:
        return cleaned
    scheme = urlsplit(cleaned).scheme.lower()
    if not scheme:
        if base_url:
            cleaned = urljoin(base_url, cleaned)
            scheme = urlsplit(cleaned).scheme.lower()
        else:
            findings.relative_urls.append(url)
            return url.strip()
    allowed = {"http", "https"} if image else SAFE_SCHEMES
    if scheme not in allowed:
        findings.bad_links.append(url[:80])
        return None
    return cleaned


def _css_plain(css: str) -> str:
    """CSS as a client may read it, squeezed: entities decoded (a <style> rule can end up in an attribute),
    comments gone, escapes decoded (`\\65 xpression(` is `expression(`), then every space and control
    character dropped, since a URL parser drops tabs and newlines (`java\\9 script:` is `javascript:`)."""

    def char(match: re.Match[str]) -> str:
        code = int(match.group(1), 16)
        return chr(code) if 0 < code < 0x110000 and not 0xD800 <= code <= 0xDFFF else "\ufffd"

    css = _CSS_COMMENT.sub("", html.unescape(css))
    css = re.sub(r"\\([0-9a-fA-F]{1,6})[ \t\r\n\f]?", char, css)
    css = re.sub(r"\\(.)", r"\1", css, flags=re.S)  # a backslash before a newline continues the line
    return _CSS_SPACE.sub("", css)


def _css_dangerous(css: str) -> bool:
    return bool(_CSS_DANGER.search(_css_plain(css)))


def clean_css(css: str) -> str:
    """Drop CSS declarations and rules that run code in old clients (expression(), behavior, @import)."""
    css = _CSS_COMMENT.sub("", css)  # `expr/**/ession(` is `expression(` to old IE
    if not _css_dangerous(css):
        return css
    parts = re.split(r"([;{}])", css)
    kept = "".join(p for p in parts if not _css_dangerous(p))
    return "" if _css_dangerous(kept) else kept  # `url(java&#9;script:..)`: the `;` split the danger


def sanitize(
    fragment_html: str,
    *,
    base_url: str,
    embed_label: Callable[[str], str],
    findings: Findings,
) -> str:
    """Clean one HTML fragment (the rendered body); post <style> blocks are returned in findings.styles."""
    root = lhtml.fragment_fromstring(fragment_html, create_parent="div")
    for el in list(root.iter(*NESTING_VOIDS)):
        _unnest(el)
    for el in list(root.iter()):
        if not isinstance(el.tag, str):  # comments and processing instructions
            _remove(el)
            continue
        tag = el.tag.lower()
        if tag == "style":
            findings.styles.append(clean_css(el.text or ""))
            _remove(el)
        elif tag in DROP:
            findings.removed.append(tag)
            _remove(el)
        elif tag in EMBEDS:
            _embed_to_link(el, tag, base_url, embed_label, findings)
    for el in list(root.iter()):
        if not isinstance(el.tag, str):
            continue
        tag = el.tag.lower()
        if el is not root and tag not in ALLOWED_TAGS:
            el.drop_tag()
            continue
        for name in list(el.attrib):
            lname = name.lower()
            if lname not in ALLOWED_ATTRS:
                del el.attrib[name]
                if lname.startswith("on"):
                    findings.removed.append(f"{tag} {lname}=")
        style = el.get("style")
        if style is not None and _css_dangerous(style):
            el.set("style", clean_css(style))
        if "href" in el.attrib:
            url = safe_url(el.get("href", ""), base_url, findings)
            if url is None:
                del el.attrib["href"]
            else:
                el.set("href", url)
                if tag == "a":
                    el.set("target", "_blank")
                    el.attrib.pop("rel", None)
        for name in ("src", "cite"):  # on <a>, <td>, <blockquote>: no client loads them, but no script either
            if tag != "img" and name in el.attrib and safe_url(el.get(name, ""), base_url, findings) is None:
                del el.attrib[name]
        if tag == "img":
            url = safe_url(el.get("src", ""), base_url, findings, image=True)
            if url is None:
                findings.removed.append("img with unsafe src")
                _remove(el)
                continue
            el.set("src", url)
            if not (el.get("alt") or "").strip():  # markdown's ![](x) gives alt="": the writer forgot it
                findings.images_without_alt.append(url)
                el.set("alt", "")
            _clamp(el)
            if _alone_in_paragraph(el):
                el.set("class", ((el.get("class") or "") + " md-image").strip())
        elif tag == "table" and el.getparent() is root:
            if el.get("cellpadding") is None and el.get("rules") is None:  # see email.css
                el.set("cellpadding", "7")
                el.set("rules", "rows")
            wrapper = lhtml.Element("div")
            wrapper.set("class", "table-wrap")
            el.addprevious(wrapper)
            wrapper.tail, el.tail = el.tail, None
            wrapper.append(el)
    # the wrapper's own text is decoded: `&lt;script&gt;` after a removed comment must not come back as a tag
    out = html.escape(root.text or "", quote=False)
    out += "".join(lhtml.tostring(child, encoding="unicode") for child in root)
    return out


def _pixels(value: str | None) -> int | None:
    match = re.fullmatch(r"\s*(\d{1,5})\s*(?:px)?\s*", value or "")
    return int(match.group(1)) if match and int(match.group(1)) > 0 else None


def _clamp(img: lhtml.HtmlElement) -> None:
    """Keep the post's own width/height, but never wider than the column (Outlook goes by the attributes).

    An image without them shows at its natural size up to the column (max-width: 100% in email.css).
    """
    width, height = _pixels(img.get("width")), _pixels(img.get("height"))
    if width is None:
        if img.get("width") is not None:  # "100%", "auto": not a size an email client can rely on
            del img.attrib["width"]
        return
    if width > COLUMN:
        height = round(height * COLUMN / width) if height else None
        width = COLUMN
    img.set("width", str(width))
    if height:
        img.set("height", str(height))
    elif img.get("height") is not None:
        del img.attrib["height"]


def _alone_in_paragraph(img: lhtml.HtmlElement) -> bool:
    parent = img.getparent()
    if parent is None or parent.tag not in ("p", "a"):
        return False
    if parent.tag == "a":
        parent = parent.getparent()
        if parent is None or parent.tag != "p":
            return False
    return not (parent.text_content() or "").strip() and len(parent.findall(".//img")) == 1


def _unnest(el: etree._Element) -> None:
    """Move what the parser put inside a void element back after it, so removing it loses nothing."""
    text, tail = el.text or "", el.tail or ""
    children = list(el)
    el.text = None
    el.tail = text
    last = el
    for child in children:
        last.addnext(child)
        last = child
    last.tail = (last.tail or "") + tail if last is not el else text + tail


def _remove(el: etree._Element) -> None:
    """Remove an element but keep the text that follows it."""
    parent = el.getparent()
    if parent is None:
        return
    tail = el.tail or ""
    prev = el.getprevious()
    if tail:
        if prev is not None:
            prev.tail = (prev.tail or "") + tail
        else:
            parent.text = (parent.text or "") + tail
    parent.remove(el)


def _embed_to_link(
    el: lhtml.HtmlElement,
    tag: str,
    base_url: str,
    embed_label: Callable[[str], str],
    findings: Findings,
) -> None:
    src = el.get("src") or el.get("data") or ""
    if not src:
        source = el.find(".//source")
        src = source.get("src", "") if source is not None else ""
    url = safe_url(src, base_url, findings) if src else None
    findings.removed.append(tag)
    if not url or url.startswith(("#", "mailto:", "tel:")):
        _remove(el)
        return
    link = lhtml.Element("a", href=url, target="_blank")
    link.set("class", "embed-link")
    link.text = embed_label(el.get("title") or url)
    parent = el.getparent()
    if parent.tag == "p":  # a <p> in a <p> would leave an empty paragraph behind
        link.tail = el.tail
        parent.replace(el, link)
        return
    para = lhtml.Element("p")
    para.append(link)
    para.tail = el.tail
    parent.replace(el, para)


def html_to_text(fragment_html: str) -> str:
    """Plain text of a raw HTML block for the text part: block elements on their own lines, links as URLs."""
    try:
        root = lhtml.fragment_fromstring(fragment_html, create_parent="div")
    except etree.ParserError:
        return ""
    for el in list(root.iter(*NESTING_VOIDS)):
        _unnest(el)
    for el in list(root.iter(*DROP, *EMBEDS)):
        src = el.get("src") or el.get("data") or ""
        if el.tag in EMBEDS and src.startswith(("http://", "https://")):
            title = el.get("title")
            el.tail = (f" {title} ({src}) " if title else f" {src} ") + (el.tail or "")
        _remove(el)
    for el in root.iter("a"):
        href = el.get("href") or ""
        label = el.text_content().strip()
        if href.startswith(("http://", "https://")) and href != label:
            el.tail = f" ({href})" + (el.tail or "")
    for el in root.iter("img"):
        alt = el.get("alt")
        if alt:
            el.tail = f"[{alt}]" + (el.tail or "")
    for el in root.iter("p", "div", "li", "tr", "h1", "h2", "h3", "h4", "br", "blockquote"):
        el.tail = "\n" + (el.tail or "")
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in root.text_content().split("\n"))
    return "\n".join(line for line in lines if line)
