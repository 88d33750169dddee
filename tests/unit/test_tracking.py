from __future__ import annotations

import base64
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postwarden.domain.bots import (
    RULES,
    Classification,
    Verdict,
    classify_click,
    classify_open,
    ip_class,
)
from postwarden.domain.links import Rewritten, instrument_html, instrument_text
from postwarden.domain.tokens import sign, verify

SECRET = b"0123456789abcdef0123456789abcdef"
OTHER = b"fedcba9876543210fedcba9876543210"
BASE = "https://pw.example.com"
U64 = (1 << 64) - 1

# --- real user agents -------------------------------------------------------------------------
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
IPHONE_MAIL = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148"
)
OUTLOOK_DESKTOP = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)"
OUTLOOK_DISCOVERY = "Microsoft Office Existence Discovery"
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
GMAIL_PREFETCH = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/42.0.2311.135 Safari/537.36 Edge/12.246 Mozilla/5.0"
)
YAHOO_PROXY = (
    "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/52.0.2743.116 Safari/537.36 YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-"
    "proxy-SLN28749.html"
)
MIMECAST = "Mozilla/5.0 (compatible; Mimecast URL Protect)"
PROOFPOINT = "Mozilla/5.0 (compatible; Proofpoint URL Defense; +https://urldefense.com)"
BARRACUDA = "Barracuda Sentinel (EE)"
PYTHON_REQUESTS = "python-requests/2.31.0"
CURL = "curl/8.4.0"
GO = "Go-http-client/1.1"
HEADLESS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/120.0.6099.109 Safari/537.36"
)
CUBOT_PHONE = (
    "Mozilla/5.0 (Linux; Android 10; CUBOT X30) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36"
)

HOME_IP = "81.2.69.160"
APPLE_IP = "17.58.63.2"
GOOGLE_PROXY_IP = "66.102.8.77"
SAFE_LINKS_IP = "40.94.29.12"
EOP_IP = "52.101.4.5"
YAHOO_IP = "98.137.27.103"


# --- tokens -----------------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", ["o", "c", "u"])
@pytest.mark.parametrize(("mid", "extra"), [(0, 0), (1, 0), (42, 7), (2**31, 255), (U64, U64)])
def test_token_round_trip(purpose: str, mid: int, extra: int) -> None:
    token = sign(SECRET, purpose, mid, extra)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert verify(SECRET, purpose, token) == (mid, extra)


def test_token_is_compact_and_deterministic() -> None:
    token = sign(SECRET, "c", 123_456_789, 3)
    assert len(token) <= 28
    assert token == sign(SECRET, "c", 123_456_789, 3)
    assert token != sign(SECRET, "c", 123_456_789, 4)


def _flip(token: str, byte_index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[byte_index] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


@pytest.mark.parametrize("byte_index", [0, 1, 2, -1, -6, -12])
def test_flipped_bit_is_rejected(byte_index: int) -> None:
    token = sign(SECRET, "o", 99, 0)
    assert verify(SECRET, "o", _flip(token, byte_index)) is None


def test_other_secret_and_other_purpose_are_rejected() -> None:
    token = sign(SECRET, "c", 5, 1)
    assert verify(OTHER, "c", token) is None
    assert verify(SECRET, "o", token) is None
    assert verify(SECRET, "u", token) is None
    assert verify(SECRET, "x", token) is None


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a",
        "AAAA",
        "!!!!!!!!!!!!!!!!!!!!!!!!",
        "not base64 at all, clearly",
        "AQcA78id5HU4tDCnOuDk==",  # padding is not part of the format
        "AQcA78id5HU4tDCnOu+k",  # standard, not url-safe, alphabet
        "A" * 10_000,  # huge
        "A" * 1_000_000,
        "é" * 24,
        "\x00" * 24,
    ],
)
def test_garbage_never_verifies(bad: str) -> None:
    assert verify(SECRET, "o", bad) is None


def test_truncated_and_extended_tokens_are_rejected() -> None:
    token = sign(SECRET, "c", 1234, 5)
    for cut in range(1, len(token)):
        assert verify(SECRET, "c", token[:cut]) is None
        assert verify(SECRET, "c", token[cut:]) is None
    assert verify(SECRET, "c", token + "A") is None
    assert verify(SECRET, "c", token + "AAAA") is None


def test_non_canonical_base64_spelling_is_rejected() -> None:
    token = sign(SECRET, "o", 200, 0)  # 16 bytes -> 22 chars, 4 unused bits in the last char
    assert verify(SECRET, "o", token) == (200, 0)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    twin = token[:-1] + alphabet[last ^ 1]  # same decoded bytes, different string
    assert base64.urlsafe_b64decode(twin + "==") == base64.urlsafe_b64decode(token + "==")
    assert verify(SECRET, "o", twin) is None


def test_verify_never_raises_on_wrong_types() -> None:
    assert verify(SECRET, "o", None) is None  # type: ignore[arg-type]
    assert verify(SECRET, "o", b"bytes") is None  # type: ignore[arg-type]
    assert verify("str-secret", "o", sign(SECRET, "o", 1)) is None  # type: ignore[arg-type]
    assert verify(b"", "o", sign(SECRET, "o", 1)) is None


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((b"", "o", 1), {}),
        ((SECRET, "open", 1), {}),
        ((SECRET, "o", -1), {}),
        ((SECRET, "o", 1 << 64), {}),
        ((SECRET, "c", 1), {"extra": -1}),
        ((SECRET, "c", True), {}),
    ],
)
def test_sign_rejects_bad_arguments(args: tuple, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        sign(*args, **kwargs)


@settings(max_examples=300, deadline=None)
@given(
    purpose=st.sampled_from(["o", "c", "u"]),
    mid=st.integers(min_value=0, max_value=U64),
    extra=st.integers(min_value=0, max_value=U64),
    secret=st.binary(min_size=1, max_size=64),
)
def test_property_round_trip(purpose: str, mid: int, extra: int, secret: bytes) -> None:
    token = sign(secret, purpose, mid, extra)
    assert verify(secret, purpose, token) == (mid, extra)
    for other in {"o", "c", "u"} - {purpose}:
        assert verify(secret, other, token) is None


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(max_size=80),
        st.text(
            alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
            min_size=18,
            max_size=46,
        ),
    )
)
def test_property_random_strings_never_verify(token: str) -> None:
    for purpose in ("o", "c", "u"):
        assert verify(SECRET, purpose, token) is None


# --- instrument_html ------------------------------------------------------------------------

TOKEN_URL = re.compile(re.escape(BASE) + r"/t/([co])/([A-Za-z0-9_-]+)")


def _instr(html: str, **kw: object) -> Rewritten:
    return instrument_html(html, base_url=BASE, secret=SECRET, message_id=77, **kw)  # type: ignore[arg-type]


def _undo(html: str, links: tuple[str, ...]) -> str:
    """Put the original URLs back and drop the pixel, to compare with the input."""

    def back(m: re.Match[str]) -> str:
        kind, token = m.groups()
        assert kind == "c"
        decoded = verify(SECRET, "c", token)
        assert decoded is not None and decoded[0] == 77
        return f"@@{decoded[1]}@@"

    html = re.sub(
        r'<img src="[^"]*/t/o/[^"]*" width="1" height="1" alt="" '
        r'style="display:none">',
        "",
        html,
    )
    return TOKEN_URL.sub(back, html)


REAL_WORLD = """<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "x.dtd">
<html xmlns="http://www.w3.org/1999/xhtml" xmlns:v="urn:schemas-microsoft-com:vml">
<head><meta charset="utf-8"><title>Your order <b> & stuff</title>
<style>a[href^="https://x"] { color: red } /* <a href="https://css.example"> */</style>
<!--[if mso]><xml><o:OfficeDocumentSettings></o:OfficeDocumentSettings></xml><![endif]-->
</head>
<BODY style="margin:0">
<table role="presentation"><tr><td align="center">
  <p>Hello Zoë, 3 < 5 and 7 > 2 — “quotes” &nbsp; &copy; 2024</p>
  <a href="https://shop.example/orders/1?utm=a&amp;b=c" style="color:#333">View order</a>
  <!--[if mso]><v:roundrect xmlns:v="urn:schemas-microsoft-com:vml" href="https://shop.example/btn"
      style="height:40px"><center>Button</center></v:roundrect><![endif]-->
  <!--[if !mso]><!--><a class="btn" href="https://shop.example/btn">Button</a><!--<![endif]-->
  <!-- old link: <a href="https://commented.example/">x</a> -->
  <a href="mailto:help@shop.example?subject=Order%201">Mail us</a>
  <a href="tel:+441234567">Call</a>
  <a href="#details">Details</a>
  <a href="/relative/path">Relative</a>
  <a name="details"></a>
  <img src="https://cdn.shop.example/logo.png" alt="Logo">
  <a HREF = 'https://shop.example/single'  >single</a>
  <a href=https://shop.example/unquoted?x=1 target=_blank>unquoted</a>
  <a data-pw-notrack href="https://shop.example/unsubscribe-preview">no track</a>
</td></tr></table>
<script type="text/javascript">document.write('<a href="https://js.example">')</script>
</BODY>
</html>
"""


def test_real_world_html_only_links_and_pixel_change() -> None:
    r = _instr(REAL_WORLD)
    assert r.links == (
        "https://shop.example/orders/1?utm=a&b=c",
        "https://shop.example/btn",
        "https://shop.example/btn",
        "https://shop.example/single",
        "https://shop.example/unquoted?x=1",
    )
    expected = (
        REAL_WORLD.replace('"https://shop.example/orders/1?utm=a&amp;b=c"', '"@@0@@"')
        .replace('href="https://shop.example/btn"\n', 'href="@@1@@"\n')
        .replace('class="btn" href="https://shop.example/btn"', 'class="btn" href="@@2@@"')
        .replace("'https://shop.example/single'", '"@@3@@"')
        .replace("https://shop.example/unquoted?x=1", '"@@4@@"')
        .replace("<a data-pw-notrack href", "<a href")
    )
    assert _undo(r.html, r.links) == expected
    # pixel exactly once, right before </BODY>
    assert r.html.count("/t/o/") == 1
    assert re.search(r'style="display:none">\n?</BODY>', r.html)
    assert "data-pw-notrack" not in r.html
    for untouched in (
        "mailto:help@shop.example?subject=Order%201",
        "tel:+441234567",
        'href="#details"',
        'href="/relative/path"',
        "https://commented.example/",
        "https://js.example",
        "https://css.example",
        'src="https://cdn.shop.example/logo.png"',
    ):
        assert untouched in r.html


def test_pixel_token_and_click_tokens_verify() -> None:
    r = _instr('<p><a href="https://a.example/">a</a></p>')
    kinds = {kind: token for kind, token in TOKEN_URL.findall(r.html)}
    assert verify(SECRET, "o", kinds["o"]) == (77, 0)
    assert verify(SECRET, "c", kinds["c"]) == (77, 0)
    assert verify(SECRET, "o", kinds["c"]) is None


def test_pixel_markup_and_no_body() -> None:
    r = _instr("<p>hi</p>")
    token = sign(SECRET, "o", 77)
    assert r.html == (
        f'<p>hi</p><img src="{BASE}/t/o/{token}" width="1" height="1" alt="" style="display:none">'
    )
    assert r.links == ()
    r2 = _instr("<html><p>hi</p></html>\n")
    assert r2.html.startswith("<html><p>hi</p><img ")
    assert r2.html.endswith('style="display:none"></html>\n')


def test_pixel_goes_before_the_last_real_body_end() -> None:
    html = "<body><!-- </body> --><p>x</p></body>"
    r = _instr(html)
    assert r.html.startswith("<body><!-- </body> --><p>x</p><img ")
    assert r.html.endswith("></body>")


def test_switches() -> None:
    html = (
        '<body><a href="https://a.example/" data-pw-notrack="1">a</a>'
        '<a href="https://b.example/">b</a></body>'
    )
    none = _instr(html, track_opens=False, track_clicks=False)
    assert (
        none.html
        == '<body><a href="https://a.example/">a</a><a href="https://b.example/">b</a></body>'
    )
    assert none.links == ()
    opens_only = _instr(html, track_clicks=False)
    assert opens_only.links == () and opens_only.html.count("/t/o/") == 1
    clicks_only = _instr(html, track_opens=False)
    assert clicks_only.links == ("https://b.example/",) and "/t/o/" not in clicks_only.html


def test_uppercase_tags_and_attributes() -> None:
    r = _instr('<A HREF="HTTPS://UPPER.EXAMPLE/Path" TARGET="_blank">x</A>')
    assert r.links == ("HTTPS://UPPER.EXAMPLE/Path",)
    assert r.html.startswith('<A HREF="https://pw.example.com/t/c/')
    assert r.html.split(">x</A>")[0].endswith('TARGET="_blank"')


def test_entities_in_hrefs_are_decoded_like_a_browser() -> None:
    r = _instr(
        '<a href="https://a.example/?x=1&amp;y=2&#38;z=3&#x26;w=4">a</a>'
        '<a href="https://b.example/?a=1&copy=2&reg;">b</a>'
        '<a href="  https://c.example/pa\nth  ">c</a>'
    )
    assert r.links == (
        "https://a.example/?x=1&y=2&z=3&w=4",
        "https://b.example/?a=1&copy=2®",
        "https://c.example/path",
    )


def test_already_tracked_links_are_not_wrapped_twice() -> None:
    once = _instr('<a href="https://a.example/">a</a>', track_opens=False)
    twice = _instr(once.html, track_opens=False)
    assert twice.html == once.html and twice.links == ()


def test_odd_markup_does_not_break_or_hang() -> None:
    nasty = [
        '<a href="https://x.example/',  # unterminated
        "<a href='https://x.example/",
        "<<<a>>> <a <a href=https://y.example/>y</a>",
        "<!-- unterminated comment <a href='https://z.example'>",
        '<a href="https://q.example/"class="tight">q</a>',
        '<a title="a > b" href="https://gt.example/">gt</a>',
        '<a\nhref\n=\n"https://nl.example/"\n>nl</a>',
        '<a href="https://dup.example/one" href="https://dup.example/two">dup</a>',
        '<a href="javascript:alert(1)">js</a><a href="">empty</a><a href>bare</a>',
        '<a href="http://">no host</a><abbr href="https://abbr.example/">not a link</abbr>',
        '<a href="https://x">' * 3 + '<a href="' * 2000,
    ]
    results = [_instr(h, track_opens=False) for h in nasty]
    assert results[0].links == () and results[0].html == nasty[0]
    assert results[1].links == ()
    assert results[2].links == ("https://y.example/",)
    assert results[3].links == ()
    assert results[4].links == ("https://q.example/",)
    assert 'href="https://pw.example.com/t/c/' in results[4].html
    assert 'class="tight"' in results[4].html
    assert results[5].links == ("https://gt.example/",)
    assert 'title="a > b"' in results[5].html
    assert results[6].links == ("https://nl.example/",)
    assert results[7].links == ("https://dup.example/one",)
    assert 'href="https://dup.example/two"' in results[7].html
    assert results[8].links == () and results[8].html == nasty[8]
    assert results[9].links == () and results[9].html == nasty[9]
    assert results[10].links == ("https://x",) * 3


@pytest.mark.parametrize(
    "hostile",
    [
        "<a" * 100_000,
        "<a " * 100_000,
        '<a x="' * 100_000,
        "<a x='" * 100_000,
        "</a" * 100_000,
        "<!--[if" * 100_000,
        "<script " * 50_000,
        "<" * 200_000,
        "<a " + "b=c " * 100_000,
        '<a href="https://x/?' + "&amp" * 100_000 + '">x</a>',
    ],
    ids=lambda h: repr(h[:12]),
)
def test_hostile_markup_is_scanned_in_linear_time(hostile: str) -> None:
    start = time.perf_counter()
    r = _instr(hostile, track_opens=False)
    assert time.perf_counter() - start < 2.0
    if "href" in hostile:
        assert len(r.links) == 1
    else:
        assert r.html == hostile and r.links == ()


def test_indices_follow_document_order() -> None:
    html = "".join(f'<a href="https://l{i}.example/">{i}</a>' for i in range(50))
    r = _instr(html, track_opens=False)
    assert r.links == tuple(f"https://l{i}.example/" for i in range(50))
    tokens = [t for _, t in TOKEN_URL.findall(r.html)]
    assert [verify(SECRET, "c", t) for t in tokens] == [(77, i) for i in range(50)]


def test_large_document_is_fast() -> None:
    block = REAL_WORLD.split("<BODY")[1]
    html = "<html><body>" + block * 400  # ~600 KB, 2000 links
    start = time.perf_counter()
    r = _instr(html)
    assert time.perf_counter() - start < 2.0
    assert len(r.links) == 2000


def test_instrument_text() -> None:
    text = (
        "Your order: https://shop.example/orders/1?x=1&y=2.\n"
        "Help (https://help.example/a_(b)) or <https://shop.example/c>, "
        "mailto:x@y.example, and already https://pw.example.com/t/c/abc\n"
    )
    out, links = instrument_text(
        text, base_url=BASE + "/", secret=SECRET, message_id=9, first_index=4
    )
    assert links == (
        "https://shop.example/orders/1?x=1&y=2",
        "https://help.example/a_(b)",
        "https://shop.example/c",
    )
    tokens = TOKEN_URL.findall(out)
    assert [verify(SECRET, "c", t) for k, t in tokens if k == "c"][:3] == [(9, 4), (9, 5), (9, 6)]
    assert out.startswith("Your order: https://pw.example.com/t/c/")
    assert ".\nHelp (https://pw.example.com/t/c/" in out
    assert ") or <https://pw.example.com/t/c/" in out
    assert "mailto:x@y.example" in out and out.endswith("https://pw.example.com/t/c/abc\n")


@pytest.mark.parametrize(
    "text", ["https://x.example/" + ")" * 100_000, "https://x.example/" + ".)" * 100_000]
)
def test_instrument_text_hostile_input_is_fast(text: str) -> None:
    start = time.perf_counter()
    _, links = instrument_text(text, base_url=BASE, secret=SECRET, message_id=1, first_index=0)
    assert time.perf_counter() - start < 2.0
    assert links == ("https://x.example/",)


# --- classification -------------------------------------------------------------------------


def _open(ua: str, ip: str = HOME_IP, seconds: float | None = 3600.0) -> Classification:
    return classify_open(user_agent=ua, ip=ip, seconds_after_delivery=seconds)


def _click(
    ua: str, ip: str = HOME_IP, method: str = "GET", seconds: float | None = 3600.0, burst: int = 0
) -> Classification:
    return classify_click(
        user_agent=ua,
        ip=ip,
        method=method,
        seconds_after_delivery=seconds,
        other_links_clicked_within_2s=burst,
    )


@pytest.mark.parametrize(
    ("ua", "ip", "verdict", "rule"),
    [
        (CHROME, HOME_IP, Verdict.HUMAN, "default"),
        (IPHONE_MAIL, HOME_IP, Verdict.HUMAN, "default"),  # Apple Mail with MPP off
        (OUTLOOK_DESKTOP, HOME_IP, Verdict.HUMAN, "default"),
        (CUBOT_PHONE, HOME_IP, Verdict.HUMAN, "default"),
        ("Mozilla/5.0", "17.58.63.2", Verdict.MACHINE, "apple-mpp"),
        ("Mozilla/5.0", "172.225.33.7", Verdict.MACHINE, "apple-mpp"),
        ("Mozilla/5.0", HOME_IP, Verdict.MACHINE, "apple-mpp"),
        (IPHONE_MAIL, APPLE_IP, Verdict.MACHINE, "apple-mpp"),
        (GMAIL_PROXY, GOOGLE_PROXY_IP, Verdict.HUMAN, "gmail-image-proxy"),
        (GMAIL_PREFETCH, "66.249.84.5", Verdict.MACHINE, "gmail-prefetch"),
        (YAHOO_PROXY, YAHOO_IP, Verdict.HUMAN, "yahoo-image-proxy"),
        (CHROME, SAFE_LINKS_IP, Verdict.MACHINE, "microsoft-safe-links"),
        (MIMECAST, HOME_IP, Verdict.MACHINE, "link-scanner-ua"),
        (PROOFPOINT, HOME_IP, Verdict.MACHINE, "link-scanner-ua"),
        (PYTHON_REQUESTS, HOME_IP, Verdict.MACHINE, "generic-bot-ua"),
        ("", HOME_IP, Verdict.MACHINE, "missing-user-agent"),
    ],
)
def test_classify_open(ua: str, ip: str, verdict: Verdict, rule: str) -> None:
    assert _open(ua, ip) == Classification(verdict, rule)


def test_opens_are_not_judged_by_time() -> None:
    # someone waiting for a sign-in code opens it within seconds
    assert _open(SAFARI_IPHONE, seconds=2.0).verdict is Verdict.HUMAN
    assert _open(CHROME, seconds=None).verdict is Verdict.HUMAN


@pytest.mark.parametrize(
    ("ua", "ip", "method", "seconds", "burst", "verdict", "rule"),
    [
        (CHROME, HOME_IP, "GET", 3600.0, 0, Verdict.HUMAN, "default"),
        (SAFARI_IPHONE, HOME_IP, "get", 45.0, 0, Verdict.HUMAN, "default"),
        (SAFARI_IPHONE, "172.224.226.9", "GET", 600.0, 0, Verdict.HUMAN, "default"),  # Relay
        (CHROME, HOME_IP, "GET", None, 0, Verdict.HUMAN, "default"),
        (CHROME, HOME_IP, "HEAD", 3600.0, 0, Verdict.MACHINE, "head-request"),
        (CHROME, HOME_IP, "GET", 3.5, 0, Verdict.MACHINE, "prefetch-after-delivery"),
        (CHROME, HOME_IP, "GET", -1.0, 0, Verdict.MACHINE, "prefetch-after-delivery"),
        (CHROME, HOME_IP, "GET", 9.99, 0, Verdict.MACHINE, "prefetch-after-delivery"),
        (CHROME, HOME_IP, "GET", 10.0, 0, Verdict.HUMAN, "default"),
        (CHROME, HOME_IP, "GET", 3600.0, 3, Verdict.MACHINE, "multi-link-burst"),
        (CHROME, SAFE_LINKS_IP, "GET", 3600.0, 0, Verdict.MACHINE, "microsoft-safe-links"),
        (CHROME, EOP_IP, "GET", 3600.0, 0, Verdict.MACHINE, "microsoft-safe-links"),
        (MIMECAST, HOME_IP, "GET", 3600.0, 0, Verdict.MACHINE, "link-scanner-ua"),
        (PROOFPOINT, HOME_IP, "GET", 3600.0, 0, Verdict.MACHINE, "link-scanner-ua"),
        (BARRACUDA, HOME_IP, "GET", 3600.0, 0, Verdict.MACHINE, "link-scanner-ua"),
        (OUTLOOK_DISCOVERY, HOME_IP, "GET", 3600.0, 0, Verdict.MACHINE, "office-link-discovery"),
        (OUTLOOK_DESKTOP, HOME_IP, "GET", 3600.0, 0, Verdict.MACHINE, "office-link-discovery"),
        (CURL, HOME_IP, "GET", 3600.0, 0, Verdict.MACHINE, "generic-bot-ua"),
        (GO, HOME_IP, "GET", 3600.0, 0, Verdict.MACHINE, "generic-bot-ua"),
        (HEADLESS, HOME_IP, "GET", 3600.0, 0, Verdict.MACHINE, "generic-bot-ua"),
        ("Java/17.0.2", HOME_IP, "GET", 3600.0, 0, Verdict.MACHINE, "generic-bot-ua"),
        (
            "Mozilla/5.0 (compatible; bingbot/2.0)",
            HOME_IP,
            "GET",
            3600.0,
            0,
            Verdict.MACHINE,
            "generic-bot-ua",
        ),
        ("Mozilla/5.0", HOME_IP, "GET", 3600.0, 0, Verdict.MACHINE, "bare-user-agent"),
        (GMAIL_PROXY, GOOGLE_PROXY_IP, "GET", 3600.0, 0, Verdict.MACHINE, "image-proxy-click"),
        ("", HOME_IP, "GET", 3600.0, 0, Verdict.MACHINE, "missing-user-agent"),
    ],
)
def test_classify_click(
    ua: str, ip: str, method: str, seconds: float | None, burst: int, verdict: Verdict, rule: str
) -> None:
    assert _click(ua, ip, method, seconds, burst) == Classification(verdict, rule)


def test_rule_table_is_well_formed() -> None:
    names = [r.name for r in RULES]
    assert len(names) == len(set(names))
    for rule in RULES:
        assert rule.kinds <= {"open", "click"} and rule.kinds
        assert rule.source
    assert {
        "apple-mpp",
        "gmail-image-proxy",
        "link-scanner-ua",
        "prefetch-after-delivery",
        "head-request",
    } <= set(names)


def test_verdict_values() -> None:
    assert Verdict.HUMAN == "human" and Verdict.MACHINE == "machine"


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("17.58.63.2", "apple-private-relay"),
        ("172.224.226.9", "apple-private-relay"),
        ("2620:149:a:1::5", "apple-private-relay"),
        ("::ffff:17.1.2.3", "apple-private-relay"),
        ("66.102.8.77", "google"),
        ("66.249.84.5", "google"),
        ("2a00:1450:4001:80b::2003", "google"),
        ("40.94.29.12", "microsoft"),
        ("52.101.4.5", "microsoft"),
        ("98.137.27.103", "yahoo"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("fd00::1", "private"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("[::1]:8080", "loopback"),
        ("81.2.69.160", "other"),
        ("8.8.8.8", "other"),
        ("", "other"),
        ("not an ip", "other"),
        ("999.1.1.1", "other"),
    ],
)
def test_ip_class(ip: str, expected: str) -> None:
    assert ip_class(ip) == expected


def test_classifiers_survive_junk_input() -> None:
    assert (
        classify_open(user_agent="x" * 100_000, ip="garbage", seconds_after_delivery=None).verdict
        is Verdict.HUMAN
    )
    assert (
        classify_click(user_agent=CHROME, ip="", method="", seconds_after_delivery=None).verdict
        is Verdict.HUMAN
    )
