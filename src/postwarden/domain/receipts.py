"""What SMS providers report, in Postwarden's words: one table of error codes, the provider
states mapped to ours, delivery receipts parsed, and receipts matched to messages.

Pure: no I/O. Used by the SMS channel (errors a provider gives when a message is submitted),
by the inbound webhooks (Twilio status callbacks, Vonage delivery receipts) and by the SMPP
session (``deliver_sm`` receipts on the bound session).

States (STATUS.md): a provider's queued/accepted is ``sending``, sent to the carrier is
``sent``, a delivery receipt is ``delivered``, an undelivered/failed/expired one is ``bounced``,
hard or soft by the error code. A receipt is never ``failed``: by the time one arrives the
provider had taken the message, so what went wrong happened on the recipient's side of it.
At submission the same table decides between ``bounced``, ``failed`` (the provider refused
the request itself: a malformed number, a refused sender) and ``deferred`` (retry: throttled,
the provider's own error, the account's credentials or balance).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = [
    "Meaning",
    "Receipt",
    "Reply",
    "explain",
    "id_forms",
    "match",
    "smpp_receipt",
    "twilio_signature",
    "vonage_signature",
]

Provider = Literal["twilio", "vonage", "smpp"]
State = Literal["sending", "sent", "delivered", "bounced"]
Outcome = Literal["bounced", "failed", "deferred"]


@dataclass(frozen=True, slots=True)
class Meaning:
    """One error code, explained: what it does to the message and what a person should do."""

    cause: str  # the row of _CAUSES
    outcome: Outcome  # at submission; a receipt is always "bounced"
    reason: str  # domain.classify's vocabulary (Sisimai's)
    hard: bool  # a definitive failure of the number: suppress it
    unsubscribed: bool  # the recipient opted out (STOP): suppress the number as unsubscribed
    group: str
    explanation: str
    next_step: str


_INVALID = "invalid number"
_UNREACHABLE = "phone unreachable"
_BLOCKED = "blocked or filtered"
_OPTOUT = "unsubscribed"
_CONTENT = "text or sender refused"
_PROVIDER = "provider or account problem"
_RATE = "rate limited"
_EXPIRED = "gave up retrying"
_UNKNOWN = "could not tell"

# cause: (outcome, reason, hard, unsubscribed, group, explanation, next step)
_CAUSES: dict[str, tuple[Outcome, str, bool, bool, str, str, str]] = {
    "unknown_number": (
        "bounced", "userunknown", True, False, _INVALID,
        "The number does not exist or is no longer in service.",
        "Correct the number and resend; this number is suppressed.",
    ),
    "invalid_number": (
        "failed", "userunknown", True, False, _INVALID,
        "The provider refused the number as invalid.",
        "Correct the number and resend.",
    ),
    "not_mobile": (
        "bounced", "notaccept", True, False, _INVALID,
        "The number cannot receive text messages (a landline, or a carrier that takes no SMS).",
        "Ask the recipient for a mobile number; this number is suppressed.",
    ),
    "barred": (
        "bounced", "notaccept", True, False, _INVALID,
        "The number is barred from receiving text messages (by its owner or its carrier).",
        "Contact the recipient another way; this number is suppressed.",
    ),
    "unreachable": (
        "bounced", "suspend", False, False, _UNREACHABLE,
        "The recipient's phone is switched off, out of coverage or busy, and the carrier "
        "stopped trying.",
        "Resend later; if it keeps failing, contact the recipient another way.",
    ),
    "recipient_account": (
        "bounced", "suspend", False, False, _UNREACHABLE,
        "The recipient's prepaid account or phone memory cannot take the message now.",
        "Resend later; if it keeps failing, contact the recipient another way.",
    ),
    "expired": (
        "bounced", "expired", False, False, _EXPIRED,
        "The carrier could not deliver it before the message's validity period ran out.",
        "Check the number, then resend if the message is still useful.",
    ),
    "network": (
        "bounced", "networkerror", False, False, _UNREACHABLE,
        "The carrier's network failed to deliver it.",
        "Resend later; nothing to do unless it keeps failing.",
    ),
    "carrier_filtered": (
        "bounced", "blocked", False, False, _BLOCKED,
        "The carrier filtered the message: its content or its sender looked like spam, or the "
        "sender is not registered for this kind of traffic.",
        "Check the content and the sender's registration (10DLC campaign, toll-free "
        "verification, sender id), then resend.",
    ),
    "blocked_number": (
        "bounced", "filtered", False, False, _BLOCKED,
        "The number is blocked from receiving messages from this sender.",
        "Contact the recipient another way, or ask them to unblock the sender.",
    ),
    "unsubscribed": (
        "bounced", "filtered", False, True, _OPTOUT,
        "The recipient replied STOP: they opted out of text messages from this sender.",
        "Do not text them; they can reply START to opt back in.",
    ),
    "content": (
        "failed", "contenterror", False, False, _CONTENT,
        "The provider refused the text (too long, or characters it cannot carry).",
        "Shorten or change the text and resend.",
    ),
    "sender": (
        "failed", "rejected", False, False, _CONTENT,
        "The provider refused the sender id or number.",
        "Use a sender number or id that the provider account may send from, then resend.",
    ),
    "invalid_request": (
        "failed", "syntaxerror", False, False, _PROVIDER,
        "The provider refused the request as malformed.",
        "Read the provider's words below; report it to Postwarden's maintainers.",
    ),
    "provider_account": (
        "deferred", "securityerror", False, False, _PROVIDER,
        "The provider refused the request because of the sending account (credentials, "
        "balance, permissions or a suspended account).",
        "Check the provider account and Postwarden's SMS settings; it will be retried.",
    ),
    "rate_limited": (
        "deferred", "speeding", False, False, _RATE,
        "The provider asked to send more slowly.",
        "It will be retried; nothing to do unless it keeps happening.",
    ),
    "provider_error": (
        "deferred", "systemerror", False, False, _PROVIDER,
        "The provider had an internal error or could not be reached.",
        "It will be retried; nothing to do unless it keeps failing.",
    ),
    "deleted": (
        "bounced", "undefined", False, False, _UNKNOWN,
        "The message was deleted at the provider before it was delivered.",
        "Resend if the message is still useful.",
    ),
    "unknown": (
        "bounced", "undefined", False, False, _UNKNOWN,
        "The provider gave no usable reason.",
        "Read the provider's words below; resend if it looks temporary.",
    ),
}  # fmt: skip

# (provider, code) -> cause. Twilio: its error codes (twilio.com/docs/api/errors), the same at
# submission and in status callbacks. Vonage: "vonage" is the submission status of the SMS API,
# "vonage-dlr" the err-code of a delivery receipt. SMPP: "smpp" is a submit_sm_resp
# command_status, "smpp-err" the err of an UNDELIV receipt (SMSCs mostly pass on the GSM MAP
# error of the network, as these).
_CODES: dict[tuple[str, str], str] = {
    **{
        ("twilio", code): cause
        for code, cause in {
            "30001": "rate_limited",  # queue overflow
            "30002": "provider_account",  # account suspended
            "30003": "unreachable",
            "30004": "blocked_number",
            "30005": "unknown_number",
            "30006": "not_mobile",  # landline or unreachable carrier
            "30007": "carrier_filtered",
            "30008": "unknown",
            "30009": "network",  # missing segment
            "30010": "provider_account",  # price exceeds the max price
            "30022": "rate_limited",  # 10DLC throughput exceeded
            "30024": "sender",  # numeric sender id not provisioned
            "30032": "carrier_filtered",  # toll-free number not verified
            "30034": "carrier_filtered",  # 10DLC unregistered number
            "14107": "rate_limited",
            "20003": "provider_account",  # authentication
            "20429": "rate_limited",
            "20500": "provider_error",
            "21211": "invalid_number",
            "21212": "sender",
            "21408": "provider_account",  # region not enabled
            "21606": "sender",
            "21608": "provider_account",  # trial account, unverified number
            "21610": "unsubscribed",
            "21612": "not_mobile",
            "21614": "not_mobile",
            "21617": "content",  # body over 1,600 characters
            "21635": "not_mobile",
            "21660": "sender",
        }.items()
    },
    **{
        ("vonage", code): cause
        for code, cause in {
            "1": "rate_limited",
            "2": "invalid_request",
            "3": "invalid_request",
            "4": "provider_account",
            "5": "provider_error",
            "6": "invalid_number",  # unrecognised number prefix
            "7": "blocked_number",
            "8": "provider_account",
            "9": "provider_account",  # no funds
            "10": "rate_limited",
            "11": "provider_account",
            "12": "content",
            "14": "provider_account",
            "15": "sender",
            "22": "invalid_number",
            "23": "provider_account",
            "29": "provider_account",  # non-whitelisted destination
            "32": "provider_account",
            "33": "unknown_number",  # number de-activated
        }.items()
    },
    **{
        ("vonage-dlr", code): cause
        for code, cause in {
            "1": "unknown",
            "2": "unreachable",  # absent subscriber, temporary
            "3": "unknown_number",  # absent subscriber, permanent
            "4": "barred",
            "5": "network",  # portability error
            "6": "carrier_filtered",  # anti-spam
            "7": "unreachable",  # handset busy
            "8": "network",
            "9": "unsubscribed",  # illegal number: opted out / blacklisted
            "10": "content",
            "11": "network",  # unroutable
            "12": "unknown_number",  # destination unreachable
            "13": "blocked_number",  # subscriber age restriction
            "14": "carrier_filtered",  # blocked by the carrier
            "15": "recipient_account",  # prepaid, insufficient funds
            "16": "rate_limited",
            "50": "carrier_filtered",
            "51": "carrier_filtered",
            "52": "carrier_filtered",
            "53": "carrier_filtered",
            "54": "carrier_filtered",
            "99": "unknown",
        }.items()
    },
    **{
        ("smpp", str(code)): cause
        for code, cause in {
            0x01: "content",  # ESME_RINVMSGLEN
            0x04: "provider_error",  # ESME_RINVBNDSTS
            0x08: "provider_error",  # ESME_RSYSERR
            0x0A: "sender",  # ESME_RINVSRCADR
            0x0B: "invalid_number",  # ESME_RINVDSTADR
            0x0D: "provider_account",  # ESME_RBINDFAIL
            0x0E: "provider_account",  # ESME_RINVPASWD
            0x0F: "provider_account",  # ESME_RINVSYSID
            0x14: "rate_limited",  # ESME_RMSGQFUL
            0x43: "invalid_request",  # ESME_RINVESMCLASS
            0x45: "provider_error",  # ESME_RSUBMITFAIL
            0x48: "sender",  # ESME_RINVSRCTON
            0x49: "sender",  # ESME_RINVSRCNPI
            0x50: "invalid_number",  # ESME_RINVDSTTON
            0x51: "invalid_number",  # ESME_RINVDSTNPI
            0x58: "rate_limited",  # ESME_RTHROTTLED
            0x62: "invalid_request",  # ESME_RINVEXPIRY
            0x64: "provider_error",  # ESME_RX_T_APPN
            0x65: "invalid_request",  # ESME_RX_P_APPN
            0x66: "invalid_request",  # ESME_RX_R_APPN
            0xC0: "invalid_request",
            0xC1: "invalid_request",
            0xC2: "invalid_request",
            0xC3: "invalid_request",
            0xC4: "invalid_request",
            0xFE: "provider_error",  # ESME_RDELIVERYFAILURE
            0xFF: "provider_error",  # ESME_RUNKNOWNERR
        }.items()
    },
    **{
        ("smpp-err", str(code)): cause
        for code, cause in {
            1: "unknown_number",  # unknown subscriber
            5: "unknown_number",  # unidentified subscriber
            9: "unknown_number",  # illegal subscriber
            11: "not_mobile",  # teleservice not provisioned
            13: "barred",  # call barred
            19: "not_mobile",  # no SMS support in the handset
            20: "unreachable",  # error in the handset
            21: "not_mobile",  # facility not supported
            22: "recipient_account",  # memory capacity exceeded
            27: "unreachable",  # absent subscriber
            29: "unreachable",
            30: "unreachable",  # busy for MT SMS
            31: "unreachable",
            32: "network",  # SM delivery failure
            34: "network",  # system failure
            36: "network",
            44: "unknown_number",  # illegal equipment
            60: "unreachable",  # no paging response
            61: "network",
            63: "network",
            64: "network",
            72: "network",
            75: "unreachable",
            80: "unreachable",
            81: "unreachable",  # IMSI detached
            82: "blocked_number",  # roaming restriction
            83: "unreachable",
            84: "unreachable",
            85: "unreachable",
            86: "unreachable",
        }.items()
    },
}

_DEFAULT_CAUSE = {
    "twilio": "unknown",
    "vonage": "provider_error",
    "vonage-dlr": "unknown",
    "smpp": "provider_error",
    "smpp-err": "unknown",
}


def explain(table: str, code: str | int | None) -> Meaning:
    """The meaning of a provider's error ``code`` in ``table`` ("twilio", "vonage",
    "vonage-dlr", "smpp", "smpp-err"); codes that are not listed have the table's default."""
    key = _code(code)
    cause = _CODES.get((table, key), _DEFAULT_CAUSE.get(table, "unknown"))
    return meaning(cause)


def meaning(cause: str) -> Meaning:
    return Meaning(cause, *_CAUSES[cause])


def _code(code: str | int | None) -> str:
    """A code as the tables key it: decimal without leading zeros ("0x0000000B" -> "11")."""
    text = str(code if code is not None else "").strip()
    if text[:2].lower() == "0x":
        with contextlib.suppress(ValueError):
            return str(int(text, 16))
    return text.lstrip("0") or ("0" if text else "")


# --------------------------------------------------------------------------------------------
# Receipts and replies
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Receipt:
    """What a provider says became of one message (or one part of it)."""

    provider: Provider
    provider_message_id: str  # as the provider names it (see :func:`id_forms` for matching)
    state: State
    status: str  # the provider's own word: "undelivered", "DELIVRD", "expired"
    code: str | None = None  # the provider's error code
    meaning: Meaning | None = None  # for a bounced receipt
    detail: str = ""  # the provider's words, as one line
    occurred_at: datetime | None = None  # the provider's (or carrier's) time, aware UTC
    message_id: int | None = None  # ours, when the receipt carries it (callback URL, client-ref)
    to: str | None = None
    raw: Mapping[str, str] = field(default_factory=dict)  # every field as received


@dataclass(frozen=True, slots=True)
class Reply:
    """A text a recipient sent back (an inbound SMS): STOP, START, HELP or anything else."""

    provider: Provider
    from_number: str  # the recipient who replied, E.164 when the provider gives it so
    to_number: str  # our number or sender id
    text: str
    keyword: Literal["stop", "start", "help"] | None
    provider_message_id: str = ""
    received_at: datetime | None = None
    raw: Mapping[str, str] = field(default_factory=dict)


# Twilio MessageStatus -> ours (twilio.com/docs/messaging/guides/outbound-message-status-in-
# status-callbacks). "sent" may be final: many carriers send no delivery receipt.
TWILIO_STATES: dict[str, State] = {
    "queued": "sending",
    "accepted": "sending",
    "scheduled": "sending",
    "sending": "sending",
    "sent": "sent",
    "delivered": "delivered",
    "read": "delivered",
    "partially_delivered": "delivered",
    "undelivered": "bounced",
    "failed": "bounced",
    "canceled": "bounced",
}

# Vonage DLR status -> ours (developer.vonage.com, SMS API delivery receipts).
VONAGE_STATES: dict[str, State] = {
    "accepted": "sent",
    "buffered": "sent",
    "delivered": "delivered",
    "expired": "bounced",
    "failed": "bounced",
    "rejected": "bounced",
    "unknown": "bounced",
}

# SMPP 3.4 message states: the stat word of a receipt's text, or the message_state TLV.
SMPP_STATES: dict[str, State] = {
    "ENROUTE": "sent",
    "ACCEPTD": "sent",
    "DELIVRD": "delivered",
    "EXPIRED": "bounced",
    "DELETED": "bounced",
    "UNDELIV": "bounced",
    "UNKNOWN": "bounced",
    "REJECTD": "bounced",
}
SMPP_MESSAGE_STATE = {
    1: "ENROUTE",
    2: "DELIVRD",
    3: "EXPIRED",
    4: "DELETED",
    5: "UNDELIV",
    6: "ACCEPTD",
    7: "UNKNOWN",
    8: "REJECTD",
}
_SMPP_STAT_CAUSE = {
    "EXPIRED": "expired",
    "DELETED": "deleted",
    "REJECTD": "carrier_filtered",
    "UNKNOWN": "unknown",
}


def twilio_meaning(status: str, code: str | None) -> Meaning:
    if code:
        return explain("twilio", code)
    return meaning("deleted" if status == "canceled" else "unknown")


def vonage_meaning(status: str, code: str | None) -> Meaning:
    if status == "expired" and _code(code) in ("", "0"):
        return meaning("expired")
    if status == "rejected" and _code(code) in ("", "0"):
        return meaning("carrier_filtered")
    return explain("vonage-dlr", code)


def smpp_meaning(stat: str, err: str | None) -> Meaning:
    if stat == "UNDELIV" or stat not in _SMPP_STAT_CAUSE:
        return explain("smpp-err", err)
    if _code(err) not in ("", "0") and (("smpp-err", _code(err)) in _CODES):
        return explain("smpp-err", err)
    return meaning(_SMPP_STAT_CAUSE[stat])


# --------------------------------------------------------------------------------------------
# SMPP receipts (deliver_sm with esm_class "SMSC delivery receipt")
# --------------------------------------------------------------------------------------------
_FIELD_RE = re.compile(r"(id|sub|dlvrd|submit date|done date|stat|err|text)\s*:\s*", re.IGNORECASE)


def smpp_fields(text: str) -> dict[str, str]:
    """The ``key:value`` fields of a receipt's text (SMPP 3.4 appendix B), keys lowercased;
    ``text`` runs to the end (it is the start of the message and may hold anything)."""
    found: dict[str, str] = {}
    matches = list(_FIELD_RE.finditer(text))
    for i, m in enumerate(matches):
        key = m.group(1).lower()
        if key in found:
            continue
        end = len(text) if key == "text" or i + 1 == len(matches) else matches[i + 1].start()
        found[key] = text[m.end() : end].strip()
        if key == "text":
            break
    return found


def _smpp_date(value: str | None) -> datetime | None:
    """YYMMDDhhmm[ss]: the SMSC's clock, taken as UTC (SMPP gives no zone here)."""
    if not value or not value.isdigit() or len(value) not in (10, 12):
        return None
    try:
        return datetime.strptime(value, "%y%m%d%H%M%S" if len(value) == 12 else "%y%m%d%H%M")
    except ValueError:
        return None


def smpp_receipt(text: str, tlvs: Mapping[str, str | int] | None = None) -> Receipt | None:
    """A deliver_sm receipt: the message id and state from the ``receipted_message_id`` and
    ``message_state`` TLVs when present, else from the ``id:… stat:… err:…`` text; None when
    neither names a message id."""
    tlvs = tlvs or {}
    fields = smpp_fields(text)
    pid = str(tlvs.get("receipted_message_id") or fields.get("id") or "").strip()
    if not pid:
        return None
    state_tlv = tlvs.get("message_state")
    stat = (
        SMPP_MESSAGE_STATE.get(int(state_tlv), "UNKNOWN")
        if isinstance(state_tlv, int)
        else fields.get("stat", "UNKNOWN").upper()[:7]
    )
    err = fields.get("err") or (
        str(tlvs["network_error_code"]) if "network_error_code" in tlvs else None
    )
    state = SMPP_STATES.get(stat, "bounced")
    done = _smpp_date(fields.get("done date"))
    raw = {**{k: str(v) for k, v in tlvs.items()}, **fields}
    detail = f"stat:{stat} err:{err or '000'}"
    when = done.replace(tzinfo=UTC) if done else None
    if state != "bounced":
        return Receipt("smpp", pid, state, stat, err, None, detail, when, raw=raw)
    return Receipt("smpp", pid, state, stat, err, smpp_meaning(stat, err), detail, when, raw=raw)


# --------------------------------------------------------------------------------------------
# Matching receipts to messages
# --------------------------------------------------------------------------------------------
def canonical_id(pid: str) -> str:
    """The form provider message ids are stored and looked up in: trimmed, lowercased, no
    leading zeros (SMSCs print the same id as ``0000A1`` and ``a1``)."""
    text = pid.strip().lower()
    return text.lstrip("0") or ("0" if text else "")


def id_forms(pid: str) -> list[str]:
    """The canonical forms a receipt's message id may have been stored under, best first.

    SMSCs often answer submit_sm with a hexadecimal id and print it in decimal in the receipt
    (or the reverse), with or without leading zeros: the id as given, then its decimal as hex,
    then its hex as decimal. Jasmin's users' most frequent failure is exactly this mismatch."""
    text = canonical_id(pid)
    forms = [text]
    if text.isdigit() and len(text) <= 20:
        forms.append(format(int(text), "x"))
    if text and len(text) <= 16 and all(c in "0123456789abcdef" for c in text):
        forms.append(str(int(text, 16)))
    return list(dict.fromkeys(forms))


Lookup = Callable[[Sequence[str]], Mapping[str, int]]
"""Canonical provider message ids -> our message ids, for the ones that are known."""


def match(
    receipts: Iterable[Receipt], lookup: Lookup
) -> tuple[list[tuple[int, Receipt]], list[Receipt]]:
    """Pair receipts with messages: by our id when the receipt carries it, else by the
    provider's id in any of its :func:`id_forms`. Returns (matched, unmatched): a receipt no
    message is known for (an SMSC's receipt racing its submit_sm_resp, a foreign id) is kept
    for the caller to store and show, never dropped."""
    pending = list(receipts)
    wanted = sorted(
        {f for r in pending if r.message_id is None for f in id_forms(r.provider_message_id)}
    )
    known = lookup(wanted) if wanted else {}
    matched: list[tuple[int, Receipt]] = []
    unmatched: list[Receipt] = []
    for r in pending:
        if r.message_id is not None:
            matched.append((r.message_id, r))
            continue
        found = next((known[f] for f in id_forms(r.provider_message_id) if f in known), None)
        if found is None:
            unmatched.append(r)
        else:
            matched.append((found, r))
    return matched, unmatched


# --------------------------------------------------------------------------------------------
# Signatures and callback addresses
# --------------------------------------------------------------------------------------------
def twilio_signature(token: str, url: str, params: Mapping[str, str | Sequence[str]]) -> str:
    """``X-Twilio-Signature``: base64 HMAC-SHA1 under the auth token of the full URL followed
    by each POST parameter name and value, names sorted (values of a repeated name sorted)."""
    data = [url]
    for name in sorted(set(params)):
        value = params[name]
        values = [value] if isinstance(value, str) else list(value)
        data.extend(name + v for v in sorted(set(values)))
    mac = hmac.new(token.encode(), "".join(data).encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


def twilio_url_variants(url: str) -> list[str]:
    """The URL with and without its default port: Twilio signs whichever form it requested,
    and a proxy may add or drop the port on the way (as the twilio package also allows)."""
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    bare = parts._replace(netloc=f"{prefix}{host}").geturl()
    ported = parts._replace(netloc=f"{prefix}{host}:{parts.port or default}").geturl()
    return list(dict.fromkeys([url, bare, ported]))


VONAGE_METHODS = {"md5hash", "md5", "sha1", "sha256", "sha512"}


def vonage_signature(secret: str, method: str, params: Mapping[str, str]) -> str:
    """Vonage's ``sig`` of signed SMS API requests and receipts: over ``&key=value`` for every
    parameter but ``sig`` in key order (``&`` and ``=`` in values replaced by ``_``), an MD5
    of that plus the secret (``md5hash``) or an HMAC under the secret (md5, sha1, sha256,
    sha512); lowercase hex."""
    data = "".join(
        f"&{k}={str(params[k]).replace('&', '_').replace('=', '_')}"
        for k in sorted(params)
        if k != "sig"
    )
    if method == "md5hash":
        return hashlib.md5((data + secret).encode()).hexdigest()
    if method not in VONAGE_METHODS:
        raise ValueError(f"unknown Vonage signature method {method!r}")
    return hmac.new(secret.encode(), data.encode(), method).hexdigest()


CALLBACK_MESSAGE = "pw_m"
CALLBACK_ISSUED = "pw_t"


def callback_url(base: str, message_id: int, issued: datetime) -> str:
    """The status callback address given to the provider for one message: it names our
    message (so a callback that outruns the recording of the send is still matched) and when
    it was issued (so a stale one is refused). Twilio signs the whole URL, so neither can be
    altered without the auth token."""
    query = urlencode({CALLBACK_MESSAGE: message_id, CALLBACK_ISSUED: int(issued.timestamp())})
    return f"{base}{'&' if '?' in base else '?'}{query}"


def callback_fields(url: str) -> tuple[int | None, datetime | None]:
    """(message id, issued) from a :func:`callback_url`; (None, None) for anything else."""
    query = dict(parse_qsl(urlsplit(url).query))
    try:
        message_id = int(query[CALLBACK_MESSAGE])
        issued = datetime.fromtimestamp(int(query[CALLBACK_ISSUED]), UTC)
    except (KeyError, ValueError, OverflowError, OSError):
        return None, None
    return message_id, issued
