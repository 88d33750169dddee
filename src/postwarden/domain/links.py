"""HTML and plain-text instrumentation: the open pixel and click redirects of a message.

A click token carries only a link index; the URL is looked up in the message's own content
(:func:`instrument_html` is deterministic), so there are no unsigned redirects.
"""

from __future__ import annotations

import html as _html
import html.entities as _entities
import re
from dataclasses import dataclass

from postwarden.domain import tokens


@dataclass(frozen=True, slots=True)
class Rewritten:
    html: str
    links: tuple[str, ...]  # original URLs; index = link number in click tokens


NOTRACK_ATTR = "data-pw-notrack"

# Attributes of a start tag, following the HTML tokenizer (quotes only count right after "=";
# "<a href=x"y>" has the unquoted value x"y). One deliberate departure: "<" may not appear in
# tag names, attribute names or unquoted values (the spec allows it, real mail never needs it),
# so an unterminated tag fails at the next "<" instead of scanning to the end of the document:
# with possessive quantifiers, the scan stays linear even on hostile input like "<a<a<a<a...".
_ATTRS = (
    r"(?:[\s/]*+[^\s/<>][^\s/<>=]*+"
    r"(?:\s*+=\s*+(?:\"[^\"]*+\"|'[^']*+'|[^\s<>]++)?+)?+)*+[\s/]*+"
)
# One scan over the document. Order matters: the first alternative that matches at a "<" wins.
_TOKEN = re.compile(
    r"<(?:"
    # Outlook conditional comment opener "<!--[if mso]>": its content is what Outlook renders,
    # so it is scanned (and its links tracked); "<![endif]-->" is consumed by <!...> below.
    r"(?P<cond>!--\[if[^\]<>]*+\]>)"
    r"|(?P<comment>!--(?:-?>|[\s\S]*?(?:--!?>|\Z)))"
    r"|(?P<cdata>!\[CDATA\[[\s\S]*?(?:\]\]>|\Z))"
    r"|(?P<decl>[!?][^>]*+(?:>|\Z))"
    # Raw-text elements: their content is not markup.
    r"|(?P<raw>(?P<rawname>script|style|textarea|title|xmp)(?=[\s/>])" + _ATTRS + r">"
    r"[\s\S]*?(?:</(?P=rawname)\s*>|\Z))"
    r"|(?P<end>/(?P<endname>[A-Za-z][^\s/<>]*+)[^<>]*+>)"
    r"|(?P<start>(?P<name>[A-Za-z][^\s/<>]*+)(?P<attrs>" + _ATTRS + r")>)"
    r")",
    re.IGNORECASE,
)
_ATTR = re.compile(
    r"(?P<name>[^\s/<>][^\s/<>=]*+)(?:\s*+=\s*+(?P<value>\"[^\"]*+\"|'[^']*+'|[^\s<>]++)?+)?+"
)
_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[A-Za-z][A-Za-z0-9]*;?)")
_HTTP = re.compile(r"https?://[^/?#\s]", re.IGNORECASE)
_URL_CTRL = re.compile(r"[\t\n\r]")
_TRACKED_TAGS = frozenset({"a", "area"})


def _unescape_attr(value: str) -> str:
    """Decode character references as a browser does inside an attribute value.

    Unlike ``html.unescape``, "&copy=2" stays as is (a legacy entity without ";" followed by
    "=" or an alphanumeric is literal in attributes), so query strings survive.
    """
    if "&" not in value:
        return value

    def repl(m: re.Match[str]) -> str:
        ref = m.group(1)
        if ref[0] == "#":
            return _html.unescape(m.group(0))
        if ref.endswith(";"):
            return _entities.html5.get(ref, m.group(0))
        if value[m.end() : m.end() + 1] == "=":
            return m.group(0)
        return _entities.html5.get(ref, m.group(0))

    return _CHARREF.sub(repl, value)


def _clean_url(raw: str) -> str:
    return _URL_CTRL.sub("", _unescape_attr(raw)).strip(" \f\v\x00")


def _rewrite_tag(
    attrs: str,
    *,
    base: str,
    secret: bytes,
    message_id: int,
    links: list[str],
    track: bool,
) -> str | None:
    """New attribute text for one a/area/v:* start tag, or None when nothing changes."""
    edits: list[tuple[int, int, str]] = []
    href: re.Match[str] | None = None
    notrack = False
    seen: set[str] = set()
    for m in _ATTR.finditer(attrs):
        name = m.group("name").lower()
        if name == NOTRACK_ATTR:
            notrack = True
            start = m.start()
            while start > 0 and attrs[start - 1].isspace():
                start -= 1
            edits.append((start, m.end(), ""))
        elif name == "href" and name not in seen:  # the first of duplicate attributes wins
            href = m
        seen.add(name)
    if track and not notrack and href is not None and href.group("value") is not None:
        value = href.group("value")
        if value[:1] in "\"'":
            value = value[1:-1]
        url = _clean_url(value)
        if _HTTP.match(url) and not url.startswith(f"{base}/t/"):
            token = tokens.sign(secret, "c", message_id, len(links))
            links.append(url)
            new = '"' + _html.escape(f"{base}/t/c/{token}", quote=True) + '"'
            edits.append((href.start("value"), href.end("value"), new))
    if not edits:
        return None
    out = attrs
    for start, end, text in sorted(edits, reverse=True):
        out = out[:start] + text + out[end:]
    return out


def instrument_html(
    html: str,
    *,
    base_url: str,
    secret: bytes,
    message_id: int,
    track_opens: bool = True,
    track_clicks: bool = True,
) -> Rewritten:
    """Route http(s) links through ``{base_url}/t/c/{token}`` and add an open pixel.

    Only ``<a>``/``<area>`` (and Outlook VML ``<v:...>`` buttons) with an absolute http(s) href
    are rewritten; mailto:, tel:, #anchors, relative and template links are left alone, as are
    links carrying ``data-pw-notrack`` (the attribute itself is always removed). Links already
    pointing at ``{base_url}/t/`` are not wrapped twice. Comments, <script>, <style> and other
    raw-text content are not touched; Outlook conditional comments are scanned. Everything
    else is kept character for character. Run it on the rendered HTML, not on the template.
    """
    base = base_url.rstrip("/")
    links: list[str] = []
    out: list[str] = []
    last = 0
    body_end: int | None = None  # offset in the output list of the last </body>
    html_end: int | None = None
    for m in _TOKEN.finditer(html):
        if m.group("end") is not None:
            endname = m.group("endname").lower()
            if endname in ("body", "html"):
                out.append(html[last : m.start()])
                last = m.start()
                if endname == "body":
                    body_end = len(out)
                else:
                    html_end = len(out)
            continue
        if m.group("start") is None:
            continue
        name = m.group("name").lower()
        if name not in _TRACKED_TAGS and not name.startswith("v:"):
            continue
        attrs = m.group("attrs")
        if "href" not in attrs.lower() and NOTRACK_ATTR not in attrs.lower():
            continue
        new_attrs = _rewrite_tag(
            attrs, base=base, secret=secret, message_id=message_id, links=links, track=track_clicks
        )
        if new_attrs is None:
            continue
        out.append(html[last : m.start("attrs")])
        out.append(new_attrs)
        last = m.end("attrs")
    out.append(html[last:])

    if track_opens:
        token = tokens.sign(secret, "o", message_id, 0)
        src = _html.escape(f"{base}/t/o/{token}", quote=True)
        pixel = f'<img src="{src}" width="1" height="1" alt="" style="display:none">'
        at = body_end if body_end is not None else html_end
        if at is None:
            out.append(pixel)
        else:
            out.insert(at, pixel)
    return Rewritten(html="".join(out), links=tuple(links))


_TEXT_URL = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)
_TRAILING = ".,;:!?*'\""
_CLOSERS = {")": "(", "]": "[", "}": "{"}


def _trim_text_url(url: str) -> str:
    """Drop sentence punctuation and unbalanced closing brackets from a URL found in prose."""
    opened = {closer: url.count(opener) for closer, opener in _CLOSERS.items()}
    closed = {closer: url.count(closer) for closer in _CLOSERS}
    end = len(url)
    while end:
        last = url[end - 1]
        if last in _TRAILING:
            end -= 1
        elif last in _CLOSERS and closed[last] > opened[last]:
            closed[last] -= 1
            end -= 1
        else:
            break
    return url[:end]


def instrument_text(
    text: str, *, base_url: str, secret: bytes, message_id: int, first_index: int
) -> tuple[str, tuple[str, ...]]:
    """Rewrite bare http(s) URLs in a plain-text body; link indices start at ``first_index``.

    Use the HTML part's ``len(links)`` as ``first_index`` so both parts share one index space.
    """
    base = base_url.rstrip("/")
    links: list[str] = []
    out: list[str] = []
    last = 0
    for m in _TEXT_URL.finditer(text):
        url = _trim_text_url(m.group(0))
        if not _HTTP.match(url) or url.startswith(f"{base}/t/"):
            continue
        token = tokens.sign(secret, "c", message_id, first_index + len(links))
        links.append(url)
        out.append(text[last : m.start()])
        out.append(f"{base}/t/c/{token}")
        last = m.start() + len(url)
    out.append(text[last:])
    return "".join(out), tuple(links)


def links_of(secret: bytes, base_url: str, html: str | None, text: str | None) -> tuple[str, ...]:
    """The tracked URLs of a content, in link-index order: its HTML links, then its plain-text
    links (indices a message gets only when ``track_text_links`` was on when it was built)."""
    base = base_url.rstrip("/")
    links: tuple[str, ...] = ()
    if html is not None:
        links = instrument_html(
            html, base_url=base, secret=secret, message_id=0, track_opens=False
        ).links
    if text is not None:
        _, more = instrument_text(
            text, base_url=base, secret=secret, message_id=0, first_index=len(links)
        )
        links += more
    return links
