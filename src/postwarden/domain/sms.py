"""Text messages as the network carries them: encoding, segments, parts, reply keywords.

Pure: no I/O. 3GPP TS 23.038 (the GSM 7-bit default alphabet and its extension table, else
UCS-2) and TS 23.040 (concatenation with a User Data Header):

- A text that fits the GSM 7-bit alphabet is sent in it; its length counts septets, and each
  character of the extension table (``€ [ ] { } \\ ~ ^ |`` and form feed) takes two (the escape
  and the character). Otherwise it is UCS-2 (UTF-16 code units: a character outside the Basic
  Multilingual Plane, such as most emoji, is a surrogate pair and counts two).
- One segment holds 160 septets or 70 units. A longer text is split in parts of 153 septets or
  67 units (the 6-octet concatenation header takes the rest); a split never falls inside an
  escape pair or a surrogate pair, so a part may hold one less.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Encoded",
    "Part",
    "encode",
    "gsm_bytes",
    "keyword",
    "smpp_parts",
    "split",
    "too_long",
]

Encoding = Literal["gsm7", "ucs2"]

# The GSM 7-bit default alphabet, by septet value (0x1B is the escape to the extension table).
_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_EXTENSION = {"\x0c": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F, "[": 0x3C, "~": 0x3D,
              "]": 0x3E, "|": 0x40, "€": 0x65}  # fmt: skip
_ESC = 0x1B
_SEPTET = {ch: i for i, ch in enumerate(_BASIC) if i != _ESC}
_GSM_CHARS = frozenset(_SEPTET) | frozenset(_EXTENSION)

SINGLE = {"gsm7": 160, "ucs2": 70}
"""Septets (GSM 7-bit) or UTF-16 units (UCS-2) in a text sent as one segment."""
CONCATENATED = {"gsm7": 153, "ucs2": 67}
"""Per part of a concatenated text (the concatenation header takes the rest)."""
DATA_CODING = {"gsm7": 0x00, "ucs2": 0x08}
"""SMPP ``data_coding``: 0 the SMSC default alphabet (GSM 7-bit), 8 UCS-2."""


@dataclass(frozen=True, slots=True)
class Encoded:
    """How a text goes over the air."""

    encoding: Encoding
    units: int  # septets (gsm7) or UTF-16 code units (ucs2)
    segments: int


def _units(ch: str, encoding: Encoding) -> int:
    if encoding == "gsm7":
        return 2 if ch in _EXTENSION else 1
    return 2 if ord(ch) > 0xFFFF else 1


def encoding_of(text: str) -> Encoding:
    return "gsm7" if _GSM_CHARS.issuperset(text) else "ucs2"


def split(text: str) -> list[str]:
    """The text's parts as sent: one part when it fits one segment, else the concatenated
    parts (never cutting an escape pair or a surrogate pair)."""
    encoding = encoding_of(text)
    if sum(_units(ch, encoding) for ch in text) <= SINGLE[encoding]:
        return [text]
    limit = CONCATENATED[encoding]
    parts: list[str] = []
    start = used = 0
    for i, ch in enumerate(text):
        n = _units(ch, encoding)
        if used + n > limit:
            parts.append(text[start:i])
            start, used = i, 0
        used += n
    parts.append(text[start:])
    return parts


def encode(text: str) -> Encoded:
    """Encoding, length in its units and number of segments of ``text``."""
    encoding = encoding_of(text)
    units = sum(_units(ch, encoding) for ch in text)
    segments = 1 if units <= SINGLE[encoding] else len(split(text))
    return Encoded(encoding, units, segments)


def too_long(text: str, max_segments: int) -> str | None:
    """Why ``text`` may not be sent with a limit of ``max_segments``, or None."""
    if not text:
        return "The text is empty."
    enc = encode(text)
    if enc.segments <= max_segments:
        return None
    kind = "GSM 7-bit characters" if enc.encoding == "gsm7" else "UCS-2 characters"
    return (
        f"The text needs {enc.segments} segments ({enc.units} {kind}); "
        f"at most {max_segments} are allowed."
    )


def gsm_bytes(text: str) -> bytes:
    """The text in GSM 7-bit septets, one per octet (SMPP ``data_coding`` 0, unpacked);
    extension characters are the escape 0x1B and their code. ValueError if it does not fit."""
    out = bytearray()
    for ch in text:
        if ch in _EXTENSION:
            out += bytes((_ESC, _EXTENSION[ch]))
        elif ch in _SEPTET:
            out.append(_SEPTET[ch])
        else:
            raise ValueError(f"{ch!r} is not in the GSM 7-bit alphabet")
    return bytes(out)


_FROM_SEPTET = {i: ch for ch, i in _SEPTET.items()}
_FROM_EXTENSION = {code: ch for ch, code in _EXTENSION.items()}


def gsm_text(data: bytes) -> str:
    """Inverse of :func:`gsm_bytes` (an escape before an unknown code reads as a space, as
    TS 23.038 asks)."""
    out: list[str] = []
    escaped = False
    for b in data:
        if escaped:
            out.append(_FROM_EXTENSION.get(b, " "))
            escaped = False
        elif b == _ESC:
            escaped = True
        else:
            out.append(_FROM_SEPTET.get(b & 0x7F, " "))
    return "".join(out)


def encode_bytes(text: str, encoding: Encoding) -> bytes:
    return gsm_bytes(text) if encoding == "gsm7" else text.encode("utf-16-be")


def decode_bytes(data: bytes, data_coding: int) -> str:
    """A received short message: UCS-2 for ``data_coding`` 8, else GSM 7-bit unpacked (or
    Latin-1 for 3, as SMPP 3.4 lists)."""
    if data_coding == 0x08:
        return data.decode("utf-16-be", errors="replace")
    if data_coding == 0x03:
        return data.decode("latin-1")
    return gsm_text(data)


@dataclass(frozen=True, slots=True)
class Part:
    """One submit_sm's worth of a text, for SMPP."""

    short_message: bytes  # the encoded part, after its User Data Header when ``udh``
    data_coding: int
    udh: bool  # esm_class carries UDHI (0x40): the header is inside short_message
    ref: int  # concatenation reference (same in every part of a text); 0 for a single part
    seq: int  # 1-based
    total: int


def smpp_parts(text: str, *, ref: int, method: Literal["udh", "sar"] = "udh") -> list[Part]:
    """Split ``text`` for submit_sm: a single part as is, else concatenated parts carrying
    either a User Data Header (8-bit reference: ``05 00 03 ref total seq``) or, for
    ``method="sar"``, nothing in the text: the caller sends sar_msg_ref_num (16-bit ``ref``),
    sar_total_segments and sar_segment_seqnum TLVs from :attr:`Part.ref`/``total``/``seq``."""
    encoding = encoding_of(text)
    coding = DATA_CODING[encoding]
    texts = split(text)
    if len(texts) == 1:
        return [Part(encode_bytes(text, encoding), coding, False, 0, 1, 1)]
    total = len(texts)
    if total > 255:
        raise ValueError(f"{total} parts: concatenation allows at most 255")
    ref = ref & (0xFF if method == "udh" else 0xFFFF)
    parts = []
    for seq, piece in enumerate(texts, 1):
        body = encode_bytes(piece, encoding)
        if method == "udh":
            body = bytes((0x05, 0x00, 0x03, ref, total, seq)) + body
        parts.append(Part(body, coding, method == "udh", ref, seq, total))
    return parts


def join_udh(parts: list[bytes], data_coding: int) -> str:
    """Reassemble received UDH parts (each short_message with its header), in any order."""
    ordered = sorted(parts, key=_udh_seq)
    return "".join(decode_bytes(p[p[0] + 1 :], data_coding) for p in ordered)


def _udh_seq(part: bytes) -> int:
    header = part[1 : part[0] + 1]
    i = 0
    while i + 1 < len(header):
        iei, length = header[i], header[i + 1]
        value = header[i + 2 : i + 2 + length]
        if iei == 0x00 and length == 3:
            return value[2]
        if iei == 0x08 and length == 4:
            return value[3]
        i += 2 + length
    return 0


# Reply keywords: what carriers and providers (Twilio's defaults, the CTIA's list) treat as
# an opt-out, an opt-in or a request for help, when the whole reply is that one word.
_KEYWORDS: dict[str, Literal["stop", "start", "help"]] = {
    **dict.fromkeys(
        ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"), "stop"
    ),
    **dict.fromkeys(("START", "YES", "UNSTOP"), "start"),
    **dict.fromkeys(("HELP", "INFO"), "help"),
}


def keyword(text: str) -> Literal["stop", "start", "help"] | None:
    """What an inbound reply asks for, when it is one keyword (any case, surrounding spaces and
    punctuation ignored): "stop" (unsubscribe), "start" (subscribe again), "help"; else None."""
    word = text.strip().strip(".!?").strip().upper()
    return _KEYWORDS.get(word)
