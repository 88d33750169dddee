"""What intake refuses because it cannot be encoded, checked against Python's own rules:
every character ``str.splitlines`` splits on and every control character is refused in a
header field; a lone surrogate or NUL is refused anywhere; what the composer encodes passes."""

from __future__ import annotations

import sys

import pytest
from pydantic import ValidationError

from postwarden.intake import schemas
from postwarden.outbound.channels.email import compose

BASE = {"from": "app@acme.test", "to": "bob@example.test", "subject": "Hi", "text": "t"}

LINE_BREAKS = [chr(c) for c in range(sys.maxunicode + 1) if len(f"a{chr(c)}b".splitlines()) > 1]
CONTROLS = [chr(c) for c in [*range(0x20), 0x7F] if chr(c) != "\t"]
SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"]


def _refused(patch: dict[str, object]) -> str:
    with pytest.raises(ValidationError) as caught:
        schemas.MessageIn.model_validate(BASE | patch)
    (error,) = caught.value.errors()
    return f"{'.'.join(map(str, error['loc']))}: {error['msg']}"


def test_every_line_break_python_knows_is_in_the_list() -> None:
    assert LINE_BREAKS == sorted(schemas._LINE_BREAKS)
    assert {"\u2028", "\u2029", "\x85"} <= set(LINE_BREAKS)


@pytest.mark.parametrize("char", sorted({*LINE_BREAKS, *CONTROLS, *SURROGATES}))
@pytest.mark.parametrize("field", ["subject", "from", "to", "header", "filename"])
def test_header_fields_refuse_what_is_not_one_line_of_text(char: str, field: str) -> None:
    value = f"Hi{char}there"
    patch: dict[str, object] = {
        "subject": {"subject": value},
        "from": {"from": f"Ann{char} <app@acme.test>"},
        "to": {"to": f"bob{char}@example.test"},
        "header": {"headers": {"Reply-To": value}},
        "filename": {"attachments": [{"filename": f"a{char}.pdf", "content_base64": ""}]},
    }[field]
    where, _, message = _refused(patch).partition(": ")
    assert (
        where
        == {
            "subject": "subject",
            "from": "from",
            "to": "to",
            "header": "headers.Reply-To",
            "filename": "attachments.0.filename",
        }[field]
    )
    assert f"U+{ord(char):04X}" in message or "CR or LF" in message
    assert char not in message  # the words say what it was, never the character itself


@pytest.mark.parametrize("char", [*SURROGATES, "\x00"])
@pytest.mark.parametrize(
    "field", ["text", "html", "metadata key", "metadata value", "idempotency_key"]
)
def test_text_anywhere_refuses_lone_surrogates_and_nul(char: str, field: str) -> None:
    patch: dict[str, object] = {
        "text": {"text": f"a{char}b"},
        "html": {"html": f"<p>a{char}b</p>"},
        "metadata key": {"metadata": {f"k{char}": 1}},
        "metadata value": {"metadata": {"k": f"v{char}"}},
        "idempotency_key": {"idempotency_key": f"k{char}"},
    }[field]
    where, _, message = _refused(patch).partition(": ")
    assert where == field.split()[0]
    assert f"U+{ord(char):04X}" in message and char not in message


def test_a_refused_header_name_is_not_echoed() -> None:
    assert _refused({"headers": {"X-\ud800": "\u2028"}}) == (
        "headers: Value error, 'X-\\ud800' is not a header name"
    )


@pytest.mark.parametrize(
    "value",
    ["tab\there", "Grüße aus Köln", "日本語の件名", "emoji \U0001f600", "\u200b zero width"],
)
def test_what_the_composer_encodes_passes(value: str) -> None:
    body = schemas.MessageIn.model_validate(
        BASE | {"subject": value, "from": f"{value} <app@acme.test>", "headers": {"X-A": value}}
    )
    for name, text in (("Subject", body.subject), ("X-A", body.headers["X-A"])):
        assert compose._header_bytes(name, text).endswith(b"\r\n")


@pytest.mark.parametrize("char", sorted({*LINE_BREAKS, *SURROGATES}))
def test_what_is_refused_is_what_the_composer_cannot_encode_on_one_line(char: str) -> None:
    """The reason for the rule: each refused separator breaks the composer (or the line)."""
    try:
        folded = compose._header_bytes("Subject", f"Grüße{char}there")
    except (ValueError, UnicodeEncodeError):
        return
    assert folded.count(b"\r\n") > 1 or b"\n" in folded[:-2] or b"\r" in folded[:-2]
