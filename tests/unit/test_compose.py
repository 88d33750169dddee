"""compose: the bytes written without the email package's set_content are exactly its bytes."""

from __future__ import annotations

import email
import re
from email import policy

from hypothesis import given, settings
from hypothesis import strategies as st

from postwarden.domain import verp
from postwarden.outbound.channels.email import compose

_BOUNDARY = re.compile(rb"={15}\d{19}==")

# Lines of every kind set_content meets: ASCII, UTF-8, bare CR, CRLF, dots, "From ", lines
# longer than 998 bytes (which need quoted-printable or base64 and take the library's path).
_line = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40),
    st.sampled_from(["", ".", "From me", "a" * 997, "é" * 499, "b" * 1200, "x\r", "\r\ny"]),
)
_text = st.lists(_line, max_size=6).map("\n".join)


def _library(content: compose.Content) -> bytes:
    return _BOUNDARY.sub(b"B", compose._body(content, ()).as_bytes(policy=compose._POLICY))


@settings(max_examples=300, deadline=None)
@given(text=st.none() | _text, html=st.none() | _text)
def test_text_bodies_are_the_email_packages_bytes(text: str | None, html: str | None) -> None:
    content = compose.Content("shop@example.com", "Shop", "Hi", text, html)
    fast = compose._text_body(content)
    if fast is not None:
        assert _BOUNDARY.sub(b"B", fast) == _library(content)
    parsed = email.message_from_bytes(compose._body_bytes(content), policy=policy.default)
    parts = [p for p in parsed.walk() if not p.is_multipart()]
    wanted = [v for v in (text, html) if v is not None] or [""]
    # what a mail client reads back: the same text, each line ending (CR, LF, CRLF) one LF
    assert [p.get_content().replace("\r\n", "\n") for p in parts] == [
        b"".join(line + b"\n" for line in w.encode().splitlines()).decode() or "\n" for w in wanted
    ]


def test_long_lines_take_the_email_packages_encoding() -> None:
    content = compose.Content("shop@example.com", "", "Hi", "a" * 1200, None)
    assert compose._text_body(content) is None
    assert b"Content-Transfer-Encoding: quoted-printable" in compose._body_bytes(content)


def test_a_built_message_has_its_headers_and_body() -> None:
    content = compose.Content("shop@example.com", "Shop", "Your order", "Thanks, Zoë.", "<p>Hi</p>")
    raw = compose.Composer().build(
        content_id=1,
        content=content,
        to="bob@example.org",
        token="tok",
        message_id_domain="example.com",
    )
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed["To"] == "bob@example.org"
    assert parsed["Message-ID"] == "<tok@example.com>"
    assert parsed[verp.TOKEN_HEADER] == "tok"
    assert parsed.get_body(("plain",)).get_content() == "Thanks, Zoë.\r\n"
    assert parsed.get_body(("html",)).get_content() == "<p>Hi</p>\r\n"
