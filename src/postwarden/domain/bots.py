"""Human or machine: who fetched a tracking pixel or followed a link.

Apple Mail Privacy Protection, image proxies and security scanners fetch without a person;
their hits are recorded but flagged, never thrown away (see ../shared/design/PROVIDERS.md
section 5 and STATUS.md "opened"). The full IP address is never stored, only its class.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum


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
