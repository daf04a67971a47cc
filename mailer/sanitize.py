"""Make a post's HTML safe for email: allow-lists of tags, attributes, CSS and URL schemes, and nothing else.

What is on no list goes: dropped with its content (script, forms), turned into a link (iframes, video), or
unwrapped with its text kept (unknown tags), and reported for `mailer check`. The lists are data, here at the
top; one rule per kind applies them: tags, attributes, styles, URLs.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import quote, urljoin, urlsplit

from lxml import etree
from lxml import html as lhtml

from .embeds import watch_url

# --- the allow-lists ----------------------------------------------------------------------------------------

# dropped with their content and reported: code, forms, metadata, foreign content (svg, math)
DROP = {
    "script", "noscript", "style", "meta", "link", "base", "head", "title", "template", "svg", "math",
    "input", "button", "select", "textarea", "option", "optgroup", "datalist", "output", "applet",
    "frame", "frameset", "param", "source", "track", "canvas", "dialog", "portal",
}  # fmt: skip
EMBEDS = {"iframe", "embed", "object", "video", "audio"}  # become a link to what they showed
GLOBAL_ATTRIBUTES = frozenset({"class", "dir", "id", "lang", "role", "style", "title"})
_ALIGN = frozenset({"align"})
_CELL = frozenset(
    {"width", "height", "align", "valign", "bgcolor", "colspan", "rowspan", "headers", "scope", "abbr"}
)
_SECTION = frozenset({"align", "valign"})
_COLUMN = frozenset({"span", "width", "align", "valign"})
_QUOTE = frozenset({"cite", "datetime"})
# every tag kept, with the attributes it may keep besides the global ones. Any other tag is unwrapped (its
# content stays): <form>, <section>, <font>, custom elements, and <plaintext>, <xmp>, <noembed>, <listing>,
# which switch a browser to raw text up to the end of the page, footer included.
TAGS: dict[str, frozenset[str]] = {
    **{tag: frozenset() for tag in (
        "abbr b big br cite code dd dfn dl dt em i kbd mark pre s samp small span strike strong sub sup tt u"
        " var"
    ).split()},
    **{tag: _ALIGN for tag in ("p", "div", "h1", "h2", "h3", "h4", "h5", "h6")},
    "a": frozenset({"href", "name", "target"}),
    "blockquote": frozenset({"cite"}), "q": frozenset({"cite"}), "del": _QUOTE, "ins": _QUOTE,
    "time": frozenset({"datetime"}),
    "hr": frozenset({"align", "width"}),
    "img": frozenset({"src", "alt", "width", "height", "align", "border"}),
    "ol": frozenset({"start", "type", "reversed"}), "ul": frozenset({"type"}), "li": frozenset({"value"}),
    "table": frozenset({"width", "border", "cellpadding", "cellspacing", "rules", "align", "bgcolor"}),
    "thead": _SECTION, "tbody": _SECTION, "tfoot": _SECTION,
    "tr": frozenset({"align", "valign", "bgcolor"}), "td": _CELL, "th": _CELL,
    "colgroup": _COLUMN, "col": _COLUMN,
}  # fmt: skip
# Table parts only where a browser's parser keeps them, and nothing else directly inside a table. Out of
# place, a <td> or <tr> would close the template's own cell around the post, and a <table> in a <table> (or
# in a <caption>) its layout table: the rest of the post would land beside the footer, or around it.
PARENTS = {
    "tr": {"table", "thead", "tbody", "tfoot"}, "td": {"tr"}, "th": {"tr"},
    "thead": {"table"}, "tbody": {"table"}, "tfoot": {"table"}, "colgroup": {"table"},
    "col": {"table", "colgroup"},
}  # fmt: skip
CHILDREN = {
    "table": {"colgroup", "col", "thead", "tbody", "tfoot", "tr"}, "thead": {"tr"}, "tbody": {"tr"},
    "tfoot": {"tr"}, "tr": {"td", "th"}, "colgroup": {"col"},
}  # fmt: skip
# unwrapped without a word: containers whose text reads the same without them
QUIET = {
    "section", "article", "header", "footer", "nav", "aside", "main", "figure", "figcaption", "font",
    "center", "details", "summary", "label", "fieldset", "legend", "picture", "hgroup", "address", "bdi",
    "bdo", "wbr", "nobr", "html", "body", "caption",
}  # fmt: skip
URL_ATTRIBUTES = ("href", "cite")  # and <img src>, which has rules of its own
LINK_SCHEMES = {"http", "https", "mailto", "tel"}
# Only the web's: mailer attaches no parts a cid: URL could name, and Gmail and Outlook show no data: image
# (and its bytes count against Gmail's clipping limit), so both are removed and reported.
IMAGE_SCHEMES = {"http", "https"}
# CSS that mail clients apply and that stays inside its own box. Not here: position, top/left, z-index,
# transform, opacity, filter, box-shadow, text-shadow, outline (each can paint over the footer or move a
# box onto it), content, behavior, -moz-binding, custom properties and every vendor extension.
CSS_PROPERTIES = frozenset(
    """background background-color background-image background-position background-repeat background-size
    border border-top border-right border-bottom border-left border-color border-style border-width
    border-top-color border-right-color border-bottom-color border-left-color border-top-style
    border-right-style border-bottom-style border-left-style border-top-width border-right-width
    border-bottom-width border-left-width border-radius border-top-left-radius border-top-right-radius
    border-bottom-left-radius border-bottom-right-radius border-collapse border-spacing box-sizing
    caption-side clear color direction display empty-cells float font font-family font-size font-style
    font-variant font-weight height letter-spacing line-height list-style list-style-position
    list-style-type margin margin-top margin-right margin-bottom margin-left max-height max-width min-height
    min-width overflow overflow-x overflow-y overflow-wrap padding padding-top padding-right padding-bottom
    padding-left table-layout text-align text-decoration text-decoration-color text-decoration-line
    text-decoration-style text-indent text-transform vertical-align visibility white-space width word-break
    word-spacing word-wrap""".split()
)
CSS_URL_PROPERTIES = {"background", "background-image"}  # where url() may stand, with an image scheme
CSS_FUNCTIONS = {"rgb", "rgba", "hsl", "hsla"}
# a value, once escapes are decoded: words (any script: CJK font names), numbers, colours, quoted names
_CSS_VALUE = re.compile(r"[\w\s#%.,+\-/!'\"()]*")
# no function (:not(), :has()), no escape, no leading combinator (`~ td` would reach the cell's siblings)
_CSS_SELECTOR = re.compile(r"[\w.#*:\[][\w\s.#*>+~:\-\[\]=\"']*")
_CSS_MEDIA = re.compile(r"@media[\w\s():,.\-]*", re.I)
_CSS_NEGATIVE = re.compile(r"(?<![\w.])-[\d.]")

# void in HTML5, but libxml2's HTML 4 parser nests everything that follows inside them
NESTING_VOIDS = ("embed", "source", "track", "wbr", "keygen")
_URL_JUNK = re.compile(r"[\x00-\x20\x7f]+")  # what a browser drops or stops at before it reads a scheme
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+")
# both stop where they must: a greedy run tried from every position took 14 s for a 20 KB word in a style
_DOCUMENT_TAG = re.compile(r"</?(?:html|body)\b[^<>]*>?", re.I)
_CSS_FUNCTION = re.compile(r"(?<![\w-])([\w-]*)\s*\(")
_URL_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|$)", re.S)
_CSS_ESCAPE = re.compile(r"\\([0-9a-fA-F]{1,6})[ \t\r\n\f]?|\\\r\n|\\(.)|\\$", re.S)
_CSS_URL = re.compile(r"url\(\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s\"'()]*))\s*\)", re.I)
_CSS_SAFE_URL = "-._~:/?#[]@!$&*+,=%"  # what stays unescaped in a url(): no quote, bracket, space or `;`


@dataclass
class Findings:
    """What sanitising changed or noticed, for `mailer check` and the preview's check panel."""

    removed: list[str] = field(default_factory=list)
    images_without_alt: list[str] = field(default_factory=list)
    relative_urls: list[str] = field(default_factory=list)
    bad_links: list[str] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)


# --- URL rules ----------------------------------------------------------------------------------------------


def safe_url(url: str, base_url: str, findings: Findings, *, image: bool = False) -> str | None:
    """Return an absolute URL with an allowed scheme, or None when it must go (javascript:, data:, ...).

    The scheme is read as a browser reads it, with every space and control character gone
    (`java\\tscript:`); the URL keeps its inner spaces, percent-encoded, and loses its control characters.
    """
    cleaned = _URL_CONTROL.sub("", url).strip().replace(" ", "%20")
    if not cleaned:
        return None
    if cleaned.startswith("#") and not image:
        return cleaned
    scheme = urlsplit(_URL_JUNK.sub("", url)).scheme.lower()
    if not scheme:
        if not base_url:
            findings.relative_urls.append(url)
            return cleaned
        cleaned = urljoin(base_url, cleaned)
        scheme = urlsplit(cleaned).scheme.lower()
    if scheme not in (IMAGE_SCHEMES if image else LINK_SCHEMES):
        findings.bad_links.append(url[:80])
        return None
    return cleaned


# --- style rules --------------------------------------------------------------------------------------------


def _unescape_css(css: str) -> str:
    """CSS escapes decoded (`\\65 xpression` is `expression`); a backslash-newline continues the line."""

    def char(match: re.Match[str]) -> str:
        if match.group(1):
            code = int(match.group(1), 16)
            return chr(code) if 0 < code < 0x110000 and not 0xD800 <= code <= 0xDFFF else "\ufffd"
        return match.group(2) if match.group(2) and match.group(2) not in "\r\n\f" else ""

    return _CSS_ESCAPE.sub(char, css)


def clean_declaration(declaration: str, base_url: str, findings: Findings) -> str | None:
    """One `property: value` on the allow-list, escapes decoded; None when it goes (and it is reported).

    A value may hold words, numbers, colours, quoted names, rgb()/hsl() and, for a background, url() with
    an image scheme: nothing a client could run (expression(), javascript:), and no negative margin that
    would pull the footer under the post.
    """
    if not declaration.strip():
        return None
    name, colon, value = _unescape_css(declaration).partition(":")
    name = name.strip().lower() or "declaration"
    value = " ".join(value.split())
    urls = []
    for match in _CSS_URL.finditer(value):
        url = safe_url(next(g for g in match.groups() if g is not None), base_url, findings, image=True)
        urls.append(f'url("{quote(url, safe=_CSS_SAFE_URL)}")' if url and name in CSS_URL_PROPERTIES else "")
    plain = _CSS_URL.sub(" ", value)
    squeezed = unicodedata.normalize("NFKC", plain).lower()
    functions = set(_CSS_FUNCTION.findall(squeezed))
    if (
        not colon
        or name not in CSS_PROPERTIES
        or not all(urls)
        or not _CSS_VALUE.fullmatch(plain)
        or not functions <= CSS_FUNCTIONS
        or (name.startswith("margin") and _CSS_NEGATIVE.search(squeezed))
    ):
        findings.removed.append(f"style {name[:40]}" + (" value" if name in CSS_PROPERTIES else ""))
        return None
    kept = iter(urls)
    return f"{name}: {_CSS_URL.sub(lambda _: next(kept), value)}"


def clean_style(style: str, base_url: str, findings: Findings) -> str:
    """A style attribute with only the declarations on the allow-list (comments dropped first)."""
    kept, noticed = _clean_style(style, base_url)
    findings.removed += noticed.removed
    findings.relative_urls += noticed.relative_urls
    findings.bad_links += noticed.bad_links
    return kept


@lru_cache(maxsize=1024)
def _clean_style(style: str, base_url: str) -> tuple[str, Findings]:
    """clean_style, once per distinct style: a table's 600 cells repeat a handful (3x faster on a weekly)."""
    noticed = Findings()
    kept = (clean_declaration(d, base_url, noticed) for d in _CSS_COMMENT.sub("", style).split(";"))
    return "; ".join(d for d in kept if d), noticed


def _css_blocks(css: str) -> Iterator[tuple[str, str | None]]:
    """The top-level `prelude { body }` pairs of a sheet, and statements (`@import ...;`) with no body."""
    start = depth = opened = 0
    for i, ch in enumerate(css):
        if ch == "{":
            opened = i if depth == 0 else opened
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                yield css[start:opened].strip(), css[opened + 1 : i]
                start = i + 1
        elif ch in ";}" and depth == 0:
            if css[start:i].strip():
                yield css[start:i].strip(), None
            start = i + 1


def clean_css(css: str, *, scope: str = "", base_url: str = "", findings: Findings | None = None) -> str:
    """A post's <style> sheet with only rules on the allow-list, each confined to `scope`.

    Rules are rebuilt from their checked parts: selectors without functions or escapes, each prefixed with
    `scope` (the template's cell around the post), so `a { display: none }` cannot reach the footer's
    unsubscribe link; declarations as in a style attribute; @media holding such rules. Any other at-rule
    (@import, @font-face, @keyframes) goes.
    """
    findings = findings if findings is not None else Findings()
    rules = []
    for prelude, body in _css_blocks(_CSS_COMMENT.sub("", css)):
        media = " ".join(prelude.split())
        if body is None:
            findings.removed.append(f"style {media[:40]}")
        elif not prelude.startswith("@"):
            rules.append(_style_rule(prelude, body, scope, base_url, findings))
        elif _CSS_MEDIA.fullmatch(media):
            inner = [_style_rule(p, b or "", scope, base_url, findings) for p, b in _css_blocks(body)]
            if any(inner):
                rules.append(f"{media} {{ {' '.join(r for r in inner if r)} }}")
        else:
            findings.removed.append(f"style {media.split()[0][:40]}")
    return "\n".join(r for r in rules if r)


def _style_rule(prelude: str, body: str, scope: str, base_url: str, findings: Findings) -> str:
    """One `selectors { declarations }` rule rebuilt, or "" when nothing of it may stay."""
    selectors = [" ".join(s.split()) for s in prelude.split(",")]
    if not all(s and not s.startswith("@") and _CSS_SELECTOR.fullmatch(s) for s in selectors):
        findings.removed.append("style selector")
        return ""
    declarations = clean_style(body, base_url, findings)
    if not declarations:
        return ""
    return f"{', '.join(f'{scope} {s}'.strip() for s in selectors)} {{ {declarations} }}"


# --- tag and attribute rules --------------------------------------------------------------------------------


def _remove_unshown(
    el: etree._Element, base_url: str, embed_label: Callable[[str], str], findings: Findings, style_scope: str
) -> None:
    """First pass: what no email shows goes (comments, DROP), embeds become links, <style> sheets are
    cleaned into findings.styles."""
    if not isinstance(el.tag, str):  # comments and processing instructions
        _remove(el)
        return
    tag = el.tag.lower()
    if tag == "style":
        findings.styles.append(
            clean_css(el.text or "", scope=style_scope, base_url=base_url, findings=findings)
        )
        _remove(el)
    elif tag in DROP:
        findings.removed.append(tag)
        _remove(el)
    elif tag in EMBEDS:
        _embed_to_link(el, tag, base_url, embed_label, findings)


def _keep_tag(el: lhtml.HtmlElement, findings: Findings) -> bool:
    """Tag rule: a tag on the list, in a place a browser keeps it, stays; any other is unwrapped (its
    content stays) and reported, unless it is a QUIET container or a table part out of place."""
    tag = el.tag.lower()
    parent = el.getparent()
    if (
        tag in TAGS
        and parent.tag in PARENTS.get(tag, {parent.tag})
        and tag in CHILDREN.get(parent.tag, {tag})
    ):
        return True
    if tag not in QUIET and tag not in TAGS:
        findings.removed.append(tag[:40])
    el.drop_tag()
    return False


def _clean_attributes(el: lhtml.HtmlElement, tag: str, base_url: str, findings: Findings) -> None:
    """Attribute rule: the tag's own and the global attributes stay, event handlers are reported."""
    if not el.attrib:  # most elements: nothing for the rules below to look at
        return
    for name in list(el.attrib):
        lname = name.lower()
        if lname not in TAGS[tag] and lname not in GLOBAL_ATTRIBUTES:
            del el.attrib[name]
            if lname.startswith("on"):
                findings.removed.append(f"{tag} {lname}=")
    _clean_links(el, tag, base_url, findings)
    style = el.get("style")
    if style is not None:
        cleaned = clean_style(style, base_url, findings)
        if cleaned:
            el.set("style", cleaned)
        else:
            del el.attrib["style"]


def _clean_links(el: lhtml.HtmlElement, tag: str, base_url: str, findings: Findings) -> None:
    """URL rule on href and cite; a link opens in a new tab (no target= elsewhere)."""
    for name in URL_ATTRIBUTES:
        if name in el.attrib:
            url = safe_url(el.get(name, ""), base_url, findings)
            if url is None:
                del el.attrib[name]
            else:
                el.set(name, url)
    if tag == "a" and "href" in el.attrib:
        el.set("target", "_blank")
    elif "target" in el.attrib:
        del el.attrib["target"]


def _image(img: lhtml.HtmlElement, base_url: str, findings: Findings) -> None:
    """An image from the web, with alt text (empty if the post gave none: reported); images.py sizes it."""
    url = safe_url(img.get("src", ""), base_url, findings, image=True)
    if url is None:
        findings.removed.append("img with unsafe src")
        _remove(img)
        return
    img.set("src", url)
    if not (img.get("alt") or "").strip():  # markdown's ![](x) gives alt="": the writer forgot it
        findings.images_without_alt.append(url)
        img.set("alt", "")
    if _alone_in_paragraph(img):
        img.set("class", ((img.get("class") or "") + " md-image").strip())


def _wrap_table(table: lhtml.HtmlElement) -> None:
    """A top-level table gets row lines and padding (see email.css) and a wrapper that scrolls on phones."""
    if table.get("cellpadding") is None and table.get("rules") is None:
        table.set("cellpadding", "7")
        table.set("rules", "rows")
    wrapper = lhtml.Element("div")
    wrapper.set("class", "table-wrap")
    table.addprevious(wrapper)
    wrapper.tail, table.tail = table.tail, None
    wrapper.append(table)


def sanitize(
    fragment_html: str,
    *,
    base_url: str,
    embed_label: Callable[[str], str],
    findings: Findings,
    style_scope: str = "",
) -> str:
    """Clean one HTML fragment (the rendered body); its <style> sheets, cleaned and confined to
    `style_scope`, are returned in findings.styles."""
    # no control character: a browser shows none, and lxml refuses to move one (`<plaintext>\x01` crashed)
    root = _fragment(_TEXT_CONTROL.sub("", fragment_html))
    # held until the second pass, so lxml.html makes each element's Python object (a costly class lookup)
    # once, not once per pass
    first = list(root.iter())
    for el in first:
        _remove_unshown(el, base_url, embed_label, findings, style_scope)
    for el in list(root.iter()):
        if el is root or not isinstance(el.tag, str) or not _keep_tag(el, findings):
            continue
        tag = el.tag.lower()
        _clean_attributes(el, tag, base_url, findings)
        if tag == "img":
            _image(el, base_url, findings)
        elif tag == "table" and el.getparent() is root:
            _wrap_table(el)
    # serialised whole and the wrapper cut off (one call, not one per child); the wrapper's own text is
    # escaped with the rest: `&lt;script&gt;` after a removed comment must not come back as a tag
    return lhtml.tostring(root, encoding="unicode").removeprefix("<div>").removesuffix("</div>")


def _fragment(fragment_html: str) -> lhtml.HtmlElement:
    """The fragment parsed under a <div>, void elements empty. A post's <html> and <body> tags, which a
    browser ignores in a body, go first: libxml2 built no body from two of them, and lxml's parse failed."""
    root = lhtml.fragment_fromstring(_DOCUMENT_TAG.sub("", fragment_html), create_parent="div")
    for el in list(root.iter(*NESTING_VOIDS)):
        _unnest(el)
    return root


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
    url = watch_url(url)  # a known video player's URL: the video's own page
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
