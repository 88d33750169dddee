"""Encoding, segments and parts of SMS texts (3GPP TS 23.038 / 23.040), and reply keywords."""

from __future__ import annotations

import itertools

import pytest
from aiosmpplib import GSM7BitCodec
from hypothesis import given
from hypothesis import strategies as st

from postwarden.domain import sms

BASIC = sms._BASIC.replace("\x1b", "")
EXTENSION = "".join(sms._EXTENSION)
gsm_text = st.text(alphabet=BASIC + EXTENSION, max_size=700)
any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=400)


def units(text: str, encoding: str) -> int:
    if encoding == "gsm7":
        return sum(2 if c in EXTENSION else 1 for c in text)
    return len(text.encode("utf-16-be")) // 2


@pytest.mark.parametrize(
    ("text", "encoding", "count", "segments"),
    [
        ("a" * 160, "gsm7", 160, 1),
        ("a" * 161, "gsm7", 161, 2),
        ("a" * 306, "gsm7", 306, 2),
        ("a" * 307, "gsm7", 307, 3),
        ("€" * 80, "gsm7", 160, 1),  # each extension character takes two septets
        ("€" * 81, "gsm7", 162, 2),
        ("é à ü ñ Ä Ö £ ¥ § ¿ ¡ Δ Ω", "gsm7", 25, 1),  # all in the basic table
        ("ж" * 70, "ucs2", 70, 1),
        ("ж" * 71, "ucs2", 71, 2),
        ("ж" * 134, "ucs2", 134, 2),
        ("ж" * 135, "ucs2", 135, 3),
        ("😀" * 35, "ucs2", 70, 1),  # a surrogate pair counts two units
        ("😀" * 36, "ucs2", 72, 2),
        ("a" * 159 + "ç", "ucs2", 160, 3),  # ç (lower case) is not GSM: the whole text is UCS-2
        ("", "gsm7", 0, 1),
    ],
)
def test_encoding_units_and_segments(text: str, encoding: str, count: int, segments: int) -> None:
    assert sms.encode(text) == sms.Encoded(encoding, count, segments)  # type: ignore[arg-type]


def test_a_split_never_cuts_an_escape_or_a_surrogate_pair() -> None:
    parts = sms.split("a" * 152 + "€" + "b" * 10)
    assert parts[0] == "a" * 152 and parts[1].startswith("€")
    parts = sms.split("a" * 66 + "😀" + "b" * 10 + "ж")
    assert parts[0] == "a" * 66 and parts[1].startswith("😀")


@given(any_text)
def test_parts_join_back_and_fit_their_segments(text: str) -> None:
    enc = sms.encode(text)
    parts = sms.split(text)
    assert "".join(parts) == text
    assert len(parts) == enc.segments
    assert enc.units == units(text, enc.encoding)
    limit = sms.SINGLE[enc.encoding] if len(parts) == 1 else sms.CONCATENATED[enc.encoding]
    assert all(units(p, enc.encoding) <= limit for p in parts)
    if len(parts) > 1:  # no part could have taken the next character
        for part, following in itertools.pairwise(parts):
            nxt = units(following[0], enc.encoding)
            assert units(part, enc.encoding) + nxt > limit


@given(gsm_text)
def test_gsm_bytes_round_trip_and_agree_with_aiosmpplib(text: str) -> None:
    data = sms.gsm_bytes(text)
    assert sms.gsm_text(data) == text
    assert data == GSM7BitCodec().encode(text)[0]
    assert len(data) == sms.encode(text).units


def test_gsm_bytes_refuses_other_characters() -> None:
    with pytest.raises(ValueError, match="GSM 7-bit"):
        sms.gsm_bytes("ç")


def test_segment_limit() -> None:
    assert sms.too_long("a" * 153 * 3, 3) is None
    problem = sms.too_long("a" * (153 * 3 + 1), 3)
    assert problem == "The text needs 4 segments (460 GSM 7-bit characters); at most 3 are allowed."
    assert "UCS-2" in (sms.too_long("ж" * 200, 2) or "")
    assert sms.too_long("", 3) == "The text is empty."


@given(any_text.filter(bool), st.integers(0, 0xFFFF))
def test_udh_parts_carry_the_concatenation_header(text: str, ref: int) -> None:
    parts = sms.smpp_parts(text, ref=ref)
    enc = sms.encode(text)
    assert all(p.data_coding == sms.DATA_CODING[enc.encoding] for p in parts)
    if len(parts) == 1:
        assert not parts[0].udh and parts[0].short_message == sms.encode_bytes(text, enc.encoding)
        return
    total = len(parts)
    for seq, part in enumerate(parts, 1):
        assert part.udh and (part.ref, part.seq, part.total) == (ref & 0xFF, seq, total)
        assert part.short_message[:6] == bytes((5, 0, 3, ref & 0xFF, total, seq))
        assert len(part.short_message) <= 140 + 6 + 13  # unpacked septets: at most 153 + UDH
    assert sms.join_udh([p.short_message for p in reversed(parts)], parts[0].data_coding) == text


def test_sar_parts_leave_the_text_bare() -> None:
    parts = sms.smpp_parts("ж" * 100, ref=0x1234, method="sar")
    assert [(p.udh, p.ref, p.seq, p.total) for p in parts] == [
        (False, 0x1234, 1, 2),
        (False, 0x1234, 2, 2),
    ]
    assert b"".join(p.short_message for p in parts) == ("ж" * 100).encode("utf-16-be")


def test_decode_received_bytes() -> None:
    assert sms.decode_bytes("STOP".encode("utf-16-be"), 8) == "STOP"
    assert sms.decode_bytes(b"STOP", 0) == "STOP"
    assert sms.decode_bytes("café".encode("latin-1"), 3) == "café"


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("STOP", "stop"),
        (" stop ", "stop"),
        ("Stop.", "stop"),
        ("UNSUBSCRIBE", "stop"),
        ("stopall", "stop"),
        ("cancel", "stop"),
        ("START", "start"),
        ("unstop", "start"),
        ("HELP", "help"),
        ("please stop sending", None),
        ("stopp", None),
        ("", None),
    ],
)
def test_reply_keywords(text: str, word: str | None) -> None:
    assert sms.keyword(text) == word
