"""Engagement tracking, the pure part: signed tokens, HTML/text instrumentation, bot verdicts.

No I/O and no database here. The web layer calls ``verify`` on ``/t/o/{token}`` and
``/t/c/{token}`` and looks the link up in the message's stored link list (``Rewritten.links``),
so there are no unsigned redirects; ``classify_open`` / ``classify_click`` decide whether a hit
was a person or a machine (Apple MPP, image proxies, security scanners). Machine hits are
recorded but flagged, never thrown away (see ../shared/design/PROVIDERS.md section 5 and
STATUS.md "opened").

Token layout (base64url, no padding)::

    version (1 byte) | message_id (unsigned LEB128 varint) | extra (varint) | MAC (12 bytes)

MAC = HMAC-SHA256(secret, domain-tag || purpose || 0x00 || everything before the MAC), cut to
96 bits. The purpose is bound by the MAC but not stored, so an open token never verifies as a
click token. A typical token is 22-24 characters.
"""

from __future__ import annotations

import base64
import hmac
import html as _html
import html.entities as _entities
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "Classification",
    "Rewritten",
    "Verdict",
    "classify_click",
    "classify_open",
    "instrument_html",
    "instrument_text",
    "ip_class",
    "sign",
    "verify",
]

# --------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------

PURPOSES = frozenset({"o", "c", "u"})  # open pixel, click redirect, unsubscribe
_VERSION = 1
_MAC_LEN = 12  # 96 bits
_DOMAIN = b"postwarden/track\x00"
_MAX_U64 = (1 << 64) - 1
_MAX_VARINT = 10  # bytes needed for 2**64 - 1
_MIN_RAW = 1 + 1 + 1 + _MAC_LEN
_MAX_RAW = 1 + _MAX_VARINT + _MAX_VARINT + _MAC_LEN
_MAX_TOKEN_CHARS = (_MAX_RAW * 4 + 2) // 3
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_uvarint(buf: bytes, pos: int) -> tuple[int, int] | None:
    """(value, next position) for a canonical (shortest) varint, else None."""
    value = shift = 0
    for i in range(pos, min(len(buf), pos + _MAX_VARINT)):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i > pos:  # padded encoding such as 0x80 0x00: not ours
                return None
            return (value, i + 1) if value <= _MAX_U64 else None
        shift += 7
    return None


def _mac(secret: bytes, purpose: str, payload: bytes) -> bytes:
    msg = _DOMAIN + purpose.encode("ascii") + b"\x00" + payload
    return hmac.digest(secret, msg, "sha256")[:_MAC_LEN]


def sign(secret: bytes, purpose: str, message_id: int, extra: int = 0) -> str:
    """A URL-safe token binding ``purpose``, ``message_id`` and ``extra`` under ``secret``.

    ``purpose`` is "o" (open), "c" (click; extra = link index) or "u" (unsubscribe; extra =
    category hash). ``message_id`` and ``extra`` are unsigned 64-bit integers.
    Raises ValueError on bad arguments (this is the producer side; ``verify`` never raises).
    """
    if not isinstance(secret, bytes | bytearray) or not secret:
        raise ValueError("tracking secret must be non-empty bytes")
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}; expected one of {sorted(PURPOSES)}")
    for name, value in (("message_id", message_id), ("extra", extra)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_U64:
            raise ValueError(f"{name} must be an integer in [0, 2**64), got {value!r}")
    payload = bytes((_VERSION,)) + _uvarint(message_id) + _uvarint(extra)
    raw = payload + _mac(bytes(secret), purpose, payload)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def verify(secret: bytes, purpose: str, token: str) -> tuple[int, int] | None:
    """``(message_id, extra)`` if ``token`` was made by ``sign(secret, purpose, ...)``, else None.

    Forged, truncated, extended, wrong-purpose, non-canonical and malformed tokens all give
    None; the MAC comparison is constant-time; never raises.
    """
    try:
        if not isinstance(token, str) or not isinstance(secret, bytes | bytearray) or not secret:
            return None
        if purpose not in PURPOSES:
            return None
        n = len(token)
        if n < 20 or n > _MAX_TOKEN_CHARS or n % 4 == 1 or not _B64URL.fullmatch(token):
            return None
        raw = base64.urlsafe_b64decode(token + "=" * (-n % 4))
        # Base64 lets the unused low bits of the last character vary: accept one spelling only.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
            return None
        if not _MIN_RAW <= len(raw) <= _MAX_RAW:
            return None
        payload, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
        if not hmac.compare_digest(mac, _mac(bytes(secret), purpose, payload)):
            return None
        if payload[0] != _VERSION:
            return None
        first = _read_uvarint(payload, 1)
        if first is None:
            return None
        message_id, pos = first
        second = _read_uvarint(payload, pos)
        if second is None:
            return None
        extra, pos = second
        if pos != len(payload):
            return None
        return message_id, extra
    except Exception:  # never raise on hostile input
        return None


# --------------------------------------------------------------------------------------------
# HTML / text instrumentation
# --------------------------------------------------------------------------------------------


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
            token = sign(secret, "c", message_id, len(links))
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
        token = sign(secret, "o", message_id, 0)
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
        token = sign(secret, "c", message_id, first_index + len(links))
        links.append(url)
        out.append(text[last : m.start()])
        out.append(f"{base}/t/c/{token}")
        last = m.start() + len(url)
    out.append(text[last:])
    return "".join(out), tuple(links)


# --------------------------------------------------------------------------------------------
# Network classes (for the event record: never store the full IP)
# --------------------------------------------------------------------------------------------


def _nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# Apple. 17.0.0.0/8 is Apple's own allocation (ARIN NET-17-0-0-0-1); 2620:149::/32 and
# 2a01:b740::/32 are Apple's IPv6 allocations. Mail Privacy Protection fetches images through
# the iCloud Private Relay infrastructure (same mask.icloud.com hosts: wordtothewise.com/2021/09/
# apple-mpp-reporting-and-geolocation/), whose egress list Apple publishes at
# https://mask-api.icloud.com/egress-ip-ranges.csv. The Akamai-operated egress blocks below are
# a spot check of that file, not a copy: refresh from it. Cloudflare's relay egress
# (104.28.0.0/16) is left out on purpose: it is shared with Cloudflare WARP, used by people.
APPLE_NETS = _nets(
    "17.0.0.0/8",
    "2620:149::/32",
    "2a01:b740::/32",
    "172.224.0.0/15",
    "172.226.0.0/16",
)
# Google: the netblocks of _netblocks.google.com (SPF) that carry GoogleImageProxy traffic
# (66.102.0.0/20, 66.249.80.0/20 are the ones seen for image proxy fetches) plus neighbours.
GOOGLE_NETS = _nets(
    "66.102.0.0/20",
    "66.249.64.0/19",
    "64.233.160.0/19",
    "72.14.192.0/18",
    "74.125.0.0/16",
    "108.177.0.0/17",
    "172.217.0.0/16",
    "173.194.0.0/16",
    "209.85.128.0/17",
    "216.58.192.0/19",
    "142.250.0.0/15",
    "2001:4860::/32",
    "2404:6800::/32",
    "2607:f8b0::/32",
    "2800:3f0::/32",
    "2a00:1450::/32",
    "2c0f:fb50::/32",
)
# Microsoft: Exchange Online Protection / Defender for Office 365 (where Safe Links detonation
# and pre-delivery scanning come from) per learn.microsoft.com/microsoft-365/enterprise/
# urls-and-ip-address-ranges (Exchange Online, ID 9/10), plus 40.94.0.0/16 seen for Safe Links.
MICROSOFT_NETS = _nets(
    "40.92.0.0/15",
    "40.94.0.0/16",
    "40.107.0.0/16",
    "52.100.0.0/14",
    "104.47.0.0/17",
    "2a01:111:f400::/48",
    "2a01:111:f403::/48",
)
# Yahoo/AOL (AS36646, AS26101): the ranges of _spf.mail.yahoo.com and Yahoo's proxy fleet.
YAHOO_NETS = _nets(
    "66.163.160.0/19",
    "67.195.0.0/16",
    "68.180.128.0/17",
    "72.30.0.0/16",
    "74.6.0.0/16",
    "87.248.96.0/19",
    "98.136.0.0/14",
    "106.10.0.0/16",
    "212.82.96.0/19",
    "216.252.96.0/19",
)

_IP_CLASSES = (
    ("apple-private-relay", APPLE_NETS),
    ("google", GOOGLE_NETS),
    ("microsoft", MICROSOFT_NETS),
    ("yahoo", YAHOO_NETS),
)

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_ip(ip: str) -> _Address | None:
    if not isinstance(ip, str):
        return None
    text = ip.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    text = text.split("%", 1)[0]  # zone id
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _in(addr: _Address | None, nets: Iterable[_Network]) -> bool:
    return addr is not None and any(addr.version == n.version and addr in n for n in nets)


def _ip_class(addr: _Address | None) -> str:
    if addr is None:
        return "other"
    if addr.is_loopback:
        return "loopback"
    for name, nets in _IP_CLASSES:
        if _in(addr, nets):
            return name
    if addr.is_private or addr.is_link_local:
        return "private"
    return "other"


def ip_class(ip: str) -> str:
    """The network class of ``ip`` for the event record (the full address is never stored).

    One of "apple-private-relay", "google", "microsoft", "yahoo", "private", "loopback", "other".
    """
    return _ip_class(_parse_ip(ip))


# --------------------------------------------------------------------------------------------
# Human or machine
# --------------------------------------------------------------------------------------------


class Verdict(StrEnum):
    HUMAN = "human"
    MACHINE = "machine"


@dataclass(frozen=True, slots=True)
class Classification:
    verdict: Verdict
    rule: str  # the rule that decided; "default" when none matched


@dataclass(frozen=True, slots=True)
class _Hit:
    kind: str  # "open" | "click"
    ua: str  # stripped
    addr: _Address | None
    method: str  # upper case
    seconds: float | None
    other_links_2s: int


# A click sooner than this after delivery is a scanner: a person needs the message to reach the
# inbox, open it and read it; gateways (Safe Links, Mimecast, Proofpoint) and Gmail pre-click
# links on arrival. Opens are not judged by time: a user waiting for a sign-in code opens fast.
PREFETCH_WINDOW_SECONDS = 10.0
# Distinct other links of the same message followed within 2 s of this one: a person cannot,
# a scanner visiting every link does.
BURST_OTHER_LINKS = 1

_Pred = Callable[[_Hit], bool]


def _ua(pattern: str) -> _Pred:
    rx = re.compile(pattern, re.IGNORECASE)
    return lambda h: rx.search(h.ua) is not None


def _ip(nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> _Pred:
    return lambda h: _in(h.addr, nets)


def _any(*preds: _Pred) -> _Pred:
    return lambda h: any(p(h) for p in preds)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    kinds: frozenset[str]  # "open", "click"
    verdict: Verdict
    test: _Pred
    source: str


_OPEN = frozenset({"open"})
_CLICK = frozenset({"click"})
_BOTH = _OPEN | _CLICK
_M, _H = Verdict.MACHINE, Verdict.HUMAN

# Exact UA of Gmail's background image prefetch (Bird/SparkPost analysis of billions of Gmail
# opens, bird.com/en-us/blog/gmail-prefetching-images); distinct from GoogleImageProxy.
GMAIL_PREFETCH_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/42.0.2311.135 Safari/537.36 Edge/12.246 Mozilla/5.0"
)

# THE rule table. Ordered: the first rule that applies to the event kind and matches decides.
RULES: tuple[Rule, ...] = (
    Rule(
        "missing-user-agent",
        _BOTH,
        _M,
        lambda h: not h.ua,
        "every browser and mail client sends a User-Agent; only scripts omit it",
    ),
    Rule(
        "head-request",
        _CLICK,
        _M,
        lambda h: h.method == "HEAD",
        "link checkers probe with HEAD; people's browsers GET (PROVIDERS.md 5; Apple Mail 16 "
        "URL checks)",
    ),
    Rule(
        "apple-mpp",
        _OPEN,
        _M,
        _any(lambda h: h.ua == "Mozilla/5.0", _ip(APPLE_NETS)),
        "Apple Mail Privacy Protection prefetches every image on delivery through Apple's relay "
        "with the bare UA 'Mozilla/5.0' (Mailgun open-click-bot-detect: bot=apple; SendGrid "
        "sg_machine_open; SocketLabs MPP notes)",
    ),
    Rule(
        "gmail-prefetch",
        _OPEN,
        _M,
        lambda h: h.ua == GMAIL_PREFETCH_UA,
        "Gmail prefetches images for logged-in sessions with this fixed UA from Google IPs "
        "(bird.com/en-us/blog/gmail-prefetching-images; Mailgun bot=gmail)",
    ),
    Rule(
        "microsoft-safe-links",
        _BOTH,
        _M,
        _ip(MICROSOFT_NETS),
        "Defender for Office 365 Safe Links / EOP scan URLs and content from Exchange Online "
        "Protection ranges (learn.microsoft.com .../safe-links-about)",
    ),
    Rule(
        "office-link-discovery",
        _CLICK,
        _M,
        _ua(r"^Microsoft Office|ms-office|MSOffice"),
        "Office/Outlook desktop probe a link ('Microsoft Office Existence Discovery', "
        "'Microsoft Office/16.0 ...') before handing it to the browser, which then GETs it",
    ),
    Rule(
        "link-scanner-ua",
        _BOTH,
        _M,
        _ua(
            r"mimecast|proofpoint|urldefense|barracuda|ironport|cisco|trend ?micro|symantec|"
            r"broadcom|messagelabs|fireeye|trellix|bitdefender|sophos|forti(?:net|guard)|"
            r"kaspersky|check ?point|zerospam|spamtitan|mailcontrol|vade(?:secure|retro)"
        ),
        "email security gateways scan every link/image before or at delivery "
        "(PROVIDERS.md 5: Safe Links, Mimecast, Proofpoint; vendor UAs as seen in ESP logs)",
    ),
    Rule(
        "generic-bot-ua",
        _BOTH,
        _M,
        _ua(
            r"(?<!cu)bot\b|crawl|spider|slurp|python-|python/|aiohttp|httpx|curl/|wget/|"
            r"libwww|go-http-client|java/|apache-httpclient|headlesschrome|"
            r"phantomjs|puppeteer|playwright|scrapy|node-fetch|axios/|facebookexternalhit|"
            r"whatsapp|skypeuripreview"
        ),
        "HTTP libraries, headless browsers, crawlers and link-preview fetchers (Mailgun "
        "bot=generic); 'cubot' is a phone brand, not a bot",
    ),
    Rule(
        "bare-user-agent",
        _CLICK,
        _M,
        _ua(r"^Mozilla/\d\.\d$"),
        "no real browser sends a bare 'Mozilla/5.0'; scanners imitating MPP do",
    ),
    Rule(
        "image-proxy-click",
        _CLICK,
        _M,
        _ua(r"GoogleImageProxy|ggpht\.com|YahooMailProxy"),
        "image proxies fetch images, they never follow links",
    ),
    Rule(
        "prefetch-after-delivery",
        _CLICK,
        _M,
        lambda h: h.seconds is not None and h.seconds < PREFETCH_WINDOW_SECONDS,
        "gateways and Gmail pre-click links on arrival (PROVIDERS.md 5: 'filter clicks <N s "
        "after delivery')",
    ),
    Rule(
        "multi-link-burst",
        _CLICK,
        _M,
        lambda h: h.other_links_2s >= BURST_OTHER_LINKS,
        "scanners follow all links at once (PROVIDERS.md 5: 'all-links-at-once')",
    ),
    # Proxied but person-initiated: the proxy fetches when the message is displayed and caches
    # (repeat opens hidden, no geo/device). Recorded as human, rule names the proxy.
    Rule(
        "gmail-image-proxy",
        _OPEN,
        _H,
        _ua(r"GoogleImageProxy|via ggpht\.com"),
        "Gmail fetches images through its proxy when the user opens the message (Gmail, 2013; "
        "Bird: prefetch uses a different UA)",
    ),
    Rule(
        "yahoo-image-proxy",
        _OPEN,
        _H,
        _ua(r"YahooMailProxy"),
        "Yahoo Mail fetches images through its proxy when the message is displayed "
        "(help.yahoo.com/kb/SLN28749)",
    ),
)


def _classify(hit: _Hit) -> Classification:
    for rule in RULES:
        if hit.kind in rule.kinds and rule.test(hit):
            return Classification(rule.verdict, rule.name)
    return Classification(Verdict.HUMAN, "default")


def _norm_ua(user_agent: str) -> str:
    return user_agent.strip() if isinstance(user_agent, str) else ""


def classify_open(
    *, user_agent: str, ip: str, seconds_after_delivery: float | None
) -> Classification:
    """Was this pixel fetch a person opening the message, or a machine?"""
    return _classify(
        _Hit("open", _norm_ua(user_agent), _parse_ip(ip), "GET", seconds_after_delivery, 0)
    )


def classify_click(
    *,
    user_agent: str,
    ip: str,
    method: str,
    seconds_after_delivery: float | None,
    other_links_clicked_within_2s: int = 0,
) -> Classification:
    """Was this link hit a person clicking, or a scanner / prefetcher?"""
    return _classify(
        _Hit(
            "click",
            _norm_ua(user_agent),
            _parse_ip(ip),
            (method or "").strip().upper(),
            seconds_after_delivery,
            other_links_clicked_within_2s,
        )
    )
