"""Fuzzing the inbound path (issue 13's proof), bounded to a few seconds per test.

- The inbound SMTP server, real on loopback: random command sequences and data never get a
  5xx for a limit of the server's own, never crash it, and every mail answered 250 is stored
  exactly as sent.
- The parser through the applying: mutated real bounces (the shared corpus) and generated
  MIME each end as a report applied or as a recorded error ("error", its text, the raw mail
  kept), never as an exception escaping ``apply.process_pending``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import socket
import threading
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from postwarden.domain import verp
from postwarden.domain.status import Kind
from postwarden.inbound.mail import apply, dsn
from postwarden.inbound.mail.server import InboundServer
from postwarden.runtime import Parts
from postwarden.settings import Settings
from postwarden.store import accounts, inbound_queue, recorder, suppression
from postwarden.store import tables as t

BOUNCE_DOMAIN = "bounces.acme.test"
MAX_BYTES = 60_000
_CORPORA = (
    Path(__file__).resolve().parents[2].parent / "shared/corpus/bounces",
    Path("/work/shared/corpus/bounces"),
)
CORPUS = next((p for p in _CORPORA if (p / "expected.jsonl").exists()), None)

_bounded = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def parts(settings: Settings, engine: Engine) -> Parts:
    assert settings.secret_key is not None
    small = settings.model_copy(update={"inbound_max_bytes": MAX_BYTES})
    return Parts(small, engine, settings.secret_key.get_secret_value().encode())


@pytest.fixture
def message_id(engine: Engine, account_key: tuple[accounts.Account, str]) -> int:
    """A message that was sent: what the fuzzed mails at its VERP address are about."""
    from postwarden.intake import accept, schemas

    body = schemas.MessageIn.model_validate(
        {"from": "shop@acme.test", "to": "x@example.test", "subject": "Hi", "text": "hello"}
    )
    with engine.begin() as conn:
        mid = accept.submit_message(
            conn, account_key[0], body, accept.Limits(10_000_000, 200_000)
        ).id
        recorder.record(
            conn,
            [
                recorder.Fact(mid, Kind.ATTEMPT, "smtp", dedupe_key="attempt"),
                recorder.Fact(mid, Kind.RELAYED, "smtp", dedupe_key="attempt:1"),
            ],
            policy=suppression.Policy(),
        )
    return mid


# region the SMTP server


@pytest.fixture
def live(parts: Parts) -> Iterator[InboundServer]:
    """The inbound server on loopback, in an event loop of its own thread (the examples are
    plain blocking clients)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = InboundServer(parts, host="127.0.0.1", port=0)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


_ALLOWED_5XX = {
    b"500",  # syntax: unknown command, bad syntax, command line over RFC 5321's 512 octets
    b"501",  # syntax of arguments
    b"502",  # command not implemented; too many unknown commands
    b"503",  # bad sequence of commands
    b"504",
    b"530",  # AUTH (not offered)
    b"550",  # the recipient is not a bounce address of ours
    b"552",  # the mail is over the fixed maximum size it was told of (RFC 1870)
    b"553",  # malformed address
    b"555",  # unknown MAIL/RCPT parameters
}
"""5xx replies that are about what the client sent, not a limit of the server's own."""


class _Session:
    """A blocking SMTP client that checks every reply it reads."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        self.closed = False

    def reply(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            while end < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    self.closed = True
                    raise ConnectionError("closed by the server")
                self.buffer += chunk
                end = self.buffer.find(b"\r\n")
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            assert re.fullmatch(rb"[2-5]\d\d[ -].*", line, re.S), line
            code = line[:3]
            if line[3:4] == b" ":
                if code.startswith(b"5"):
                    assert code in _ALLOWED_5XX, line
                    assert not line.startswith(b"500 Error: ("), line  # an exception of ours
                    assert b"Line too long" not in line, line
                return line

    def send(self, data: bytes) -> bytes:
        self.sock.sendall(data)
        return self.reply()

    def close(self) -> None:
        self.sock.close()


_VERB = st.sampled_from(
    [b"EHLO fuzz.test", b"HELO fuzz.test", b"RSET", b"NOOP", b"HELP", b"VRFY x", b"STARTTLS"]
)
_MAIL = st.sampled_from(
    [
        b"MAIL FROM:<>",
        b"MAIL FROM:<>",
        b"MAIL FROM:<>",
        b"MAIL FROM:<someone@example.test>",
        b"MAIL FROM:<> BODY=8BITMIME",
        b"MAIL FROM:<> SMTPUTF8",
        b"MAIL FROM:<> SIZE=999999999",
        b"MAIL FROM:<\xc3\xa9@example.test> SMTPUTF8",
        b"MAIL FROM:<bad",
    ]
)
_JUNK = st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_LONG = st.integers(min_value=600, max_value=40_000).map(lambda n: b"X" * n)
_BODY_LINE = st.one_of(
    st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.integers(min_value=900, max_value=40_000).map(lambda n: b"w" * n),
    st.sampled_from([17_000, 33_000, 70_000]).map(lambda n: b"v" * n),  # over 16 KiB, the limit
    st.sampled_from([b"", b".", b"..", b". .", "Grüße".encode(), b"\xff\xfe\x00", b"--x--"]),
)
_BODY = st.lists(_BODY_LINE, max_size=12).map(lambda lines: b"".join(x + b"\r\n" for x in lines))


@st.composite
def _commands(draw: st.DrawFn, secret: bytes, message_id: int) -> list[tuple[str, bytes]]:
    """A session: mostly mail transactions (MAIL, RCPTs, DATA), each perhaps broken, with
    stray commands, junk and over-long lines between and inside them."""
    rcpt = st.sampled_from(
        [
            f"RCPT TO:<fbl@{BOUNCE_DOMAIN}>".encode(),
            f"RCPT TO:<{verp.address(secret, message_id, BOUNCE_DOMAIN)}>".encode(),
            f"RCPT TO:<{verp.address(secret, message_id, BOUNCE_DOMAIN)}>".encode(),
            b"RCPT TO:<someone@elsewhere.test>",
            f"RCPT TO:<b+forged@{BOUNCE_DOMAIN}>".encode(),
            b"RCPT TO:<" + b"r" * 300 + b"@x>",
        ]
    )
    noise = st.one_of(_VERB, _JUNK, _LONG).map(lambda c: ("line", c))
    valid = st.just(f"RCPT TO:<fbl@{BOUNCE_DOMAIN}>".encode())
    transaction = st.tuples(
        _MAIL.map(lambda c: ("line", c)),
        st.lists(st.one_of(valid, rcpt).map(lambda c: ("line", c)), min_size=1, max_size=3),
        st.lists(noise, max_size=1),
        _BODY.map(lambda b: ("data", b)),
    ).map(lambda t: [t[0], *t[1], *t[2], t[3]])
    steps = draw(
        st.lists(st.one_of(transaction, transaction, noise.map(lambda n: [n])), max_size=6)
    )
    return [("line", b"EHLO fuzz.test"), *(step for group in steps for step in group)]


def _stuffed(body: bytes) -> bytes:
    return re.sub(rb"(?m)^\.", b"..", body) + b".\r\n"


def _run(port: int, commands: list[tuple[str, bytes]]) -> dict[int, bytes]:
    """Play one session; returns the mails answered "queued as <id>", by id."""
    queued: dict[int, bytes] = {}
    session = _Session(port)
    try:
        assert session.reply().startswith(b"220 ")
        for what, payload in commands:
            body = b""
            if what == "data":
                body = payload
                line = session.send(b"DATA\r\n")
            else:
                line = session.send(payload + b"\r\n")
            if line.startswith(b"354"):  # in DATA (a junk line may have been "DATA" too)
                line = session.send(_stuffed(body))
                if line.startswith(b"250 2.0.0 Ok: queued as "):
                    queued[int(line.rsplit(b" ", 1)[1])] = body
                elif line.startswith(b"552"):
                    assert len(body) > MAX_BYTES, line
            if line.startswith((b"221", b"421")) or session.closed:
                break
    except ConnectionError:
        pass
    finally:
        session.close()
    return queued


def _stored(engine: Engine, ids: list[int]) -> dict[int, bytes]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.inbound_mails.c.id, t.inbound_mails.c.raw).where(t.inbound_mails.c.id.in_(ids))
        )
        return {r.id: bytes(r.raw) for r in rows}


def test_smtp_sessions_never_lose_a_mail_or_blame_the_sender(
    live: InboundServer,
    parts: Parts,
    engine: Engine,
    message_id: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)

    wide = b"Subject: wide\r\n\r\n" + b"w" * 20_000 + b"\r\n"

    @_bounded
    @example(  # issue 13: a line over 16 KiB was answered 500 and the bounce lost
        commands=[
            ("line", b"EHLO fuzz.test"),
            ("line", b"MAIL FROM:<>"),
            ("line", f"RCPT TO:<fbl@{BOUNCE_DOMAIN}>".encode()),
            ("data", wide),
        ]
    )
    @given(commands=_commands(parts.secret, message_id))
    def sessions(commands: list[tuple[str, bytes]]) -> None:
        queued = _run(live.port, commands)
        assert _stored(engine, list(queued)) == queued
        # Still serving: a fresh session gets its greeting and an answer.
        session = _Session(live.port)
        try:
            assert session.reply().startswith(b"220 ")
            assert session.send(b"NOOP\r\n").startswith(b"250")
        finally:
            session.close()
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == [], [r.getMessage() for r in errors]

    sessions()


# endregion

# region the parser, through the applying


def _outcomes(parts: Parts, engine: Engine, message_id: int, mails: list[bytes]) -> list[str]:
    """Store ``mails`` at the message's VERP address, apply them, and check each ends as its
    parse says: "error" with the exception's text exactly when the parser raises on it."""
    rcpt = verp.address(parts.secret, message_id, BOUNCE_DOMAIN)
    store = InboundServer(parts, host="127.0.0.1", port=0).store_many
    ids = store([("fuzz", "", [rcpt], raw) for raw in mails])
    apply.process_pending(parts, limit=len(ids))  # nothing may escape it
    with engine.connect() as conn:
        rows = {
            r.id: r
            for r in conn.execute(select(t.inbound_mails).where(t.inbound_mails.c.id.in_(ids)))
        }
    for inbound_id, raw in zip(ids, mails, strict=True):
        row = rows[inbound_id]
        assert bytes(row.raw) == raw
        try:
            dsn.parse(raw[: dsn.READ_BYTES])
        except Exception as exc:
            assert row.state == inbound_queue.ERROR
            assert row.error.startswith(type(exc).__name__)
        else:
            assert row.state in (inbound_queue.DONE, inbound_queue.UNMATCHED), row.error
            assert row.error is None
        assert row.message_id == message_id
    return [rows[i].state for i in ids]


def _corpus() -> list[bytes]:
    if CORPUS is None:
        return []
    return [p.read_bytes() for p in sorted(CORPUS.rglob("*.eml"))]


_SAMPLES = _corpus()
_INSERTS = st.one_of(
    st.binary(min_size=1, max_size=40),
    st.sampled_from(
        [
            b"\r\n",
            b"\r\n\r\n",
            b"--",
            b"\xff\xfe\x80",
            "é✓".encode(),
            b"\x00",
            b"=?utf-8?b?",
            b"Content-Type: message/rfc822\r\n\r\n\r\n",
            b"Content-Transfer-Encoding: base64\r\n",
            b"Final-Recipient: rfc822; \x00a@b\r\n",
        ]
    ),
)
_MUTATION = st.tuples(
    st.sampled_from(["insert", "delete", "copy", "cut"]),
    st.floats(min_value=0, max_value=1),
    st.floats(min_value=0, max_value=1),
    _INSERTS,
)


def _mutated(raw: bytes, mutations: list[tuple[str, float, float, bytes]]) -> bytes:
    data = bytearray(raw)
    for op, where, other, insert in mutations:
        at = int(where * len(data))
        if op == "insert":
            data[at:at] = insert
        elif op == "delete":
            del data[at : at + 1 + int(other * 300)]
        elif op == "copy":
            start = int(other * len(data))
            data[at:at] = data[start : start + 300]
        else:
            del data[at:]
    return bytes(data)


@pytest.mark.skipif(CORPUS is None, reason=f"shared bounce corpus not found at {_CORPORA}")
def test_mutated_real_bounces_end_applied_or_as_recorded_errors(
    parts: Parts, engine: Engine, message_id: int
) -> None:
    @_bounded
    @given(
        picks=st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=max(0, len(_SAMPLES) - 1)),
                st.lists(_MUTATION, min_size=1, max_size=5),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def mutated(picks: list[tuple[int, list[tuple[str, float, float, bytes]]]]) -> None:
        _outcomes(parts, engine, message_id, [_mutated(_SAMPLES[i], m) for i, m in picks])

    mutated()


_BOUNDARY = st.text(alphabet="abcXYZ0123'()+_,-./:=? *[]", min_size=1, max_size=30)
_ADDRESS = st.sampled_from(
    ["x@example.test", "<x@example.test>", "", "no-at-sign", "jürgen@example.test", "a@[1.2.3.4]"]
)
_TYPES = [
    "text/plain",
    "text/html",
    "application/json",
    "message/delivery-status",
    "message/global-delivery-status",
    "message/feedback-report",
    "message/rfc822",
    "message/global",
    "text/rfc822-headers",
    "multipart/report",
    "multipart/mixed",
    "multipart/alternative",
]


@st.composite
def _field_block(draw: st.DrawFn) -> bytes:
    fields = draw(
        st.lists(
            st.one_of(
                _ADDRESS.map(lambda a: f"Final-Recipient: rfc822; {a}"),
                _ADDRESS.map(lambda a: f"Original-Recipient: rfc822; {a}"),
                st.sampled_from(["failed", "delayed", "delivered", "relayed", "??"]).map(
                    lambda a: f"Action: {a}"
                ),
                st.sampled_from(["5.1.1", "4.2.2", "2.0.0", "9.9.9", "5.x"]).map(
                    lambda s: f"Status: {s}"
                ),
                st.text(max_size=80).map(lambda d: f"Diagnostic-Code: smtp; 550 {d}"),
                st.sampled_from(["Feedback-Type: abuse", "Reporting-MTA: dns; mx", " folded"]),
            ),
            max_size=8,
        )
    )
    return "\r\n".join(fields).encode("utf-8", "surrogatepass") + b"\r\n"


@st.composite
def _mime(draw: st.DrawFn, depth: int = 0) -> bytes:
    """A MIME entity, well or badly formed: any of the types reports use, declared charsets
    and transfer encodings true or lying, boundaries with regex metacharacters, missing
    delimiters, 8-bit bytes, blank lines before returned messages."""
    ctype = draw(st.sampled_from(_TYPES if depth < 3 else _TYPES[:9]))
    head = [f"Content-Type: {ctype}"]
    charset = draw(st.sampled_from([None, "utf-8", "iso-8859-1", "utf-16", "x-bogus"]))
    if charset:
        head[0] += f"; charset={charset}"
    cte = draw(st.sampled_from([None, "7bit", "8bit", "base64", "quoted-printable", "x-uue"]))
    if cte:
        head.append(f"Content-Transfer-Encoding: {cte}")
    if draw(st.booleans()):
        head.append(
            draw(
                st.sampled_from(
                    [
                        "From: MAILER-DAEMON@mx.example.test",
                        "Subject: =?utf-8?b?VW5kZWxpdmVyZWQ=?= Mail",
                        "Subject: =?utf-8?q?broken",
                        "X-Failed-Recipients: x@example.test",
                        "Auto-Submitted: auto-replied",
                        "X-Postwarden-Id: notatoken",
                    ]
                )
            )
        )
    if ctype.startswith("multipart/"):
        boundary = draw(_BOUNDARY)
        head[0] += f'; boundary="{boundary}"'
        parts = draw(st.lists(_mime(depth + 1), max_size=4))
        used = draw(st.sampled_from([boundary, boundary, "other"]))
        body = b"".join(b"--" + used.encode() + b"\r\n" + p + b"\r\n" for p in parts)
        if draw(st.booleans()):
            body += b"--" + used.encode() + b"--\r\n"
    elif ctype.startswith("message/") and ctype.endswith("status"):
        body = b"\r\n".join(draw(st.lists(_field_block(), max_size=4)))
    elif ctype in ("message/rfc822", "message/global"):
        body = draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"])) + draw(_mime(depth + 1))
    else:
        body = draw(
            st.one_of(
                st.binary(max_size=300),
                st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
                st.just(b"The following address failed:\r\n  x@example.test\r\n550 5.1.1 gone"),
            )
        )
    if cte == "base64" and draw(st.booleans()):
        body = base64.encodebytes(body).replace(b"\n", b"\r\n")
    return "\r\n".join(head).encode("utf-8", "surrogatepass") + b"\r\n\r\n" + body


def test_generated_mime_ends_applied_or_as_a_recorded_error(
    parts: Parts, engine: Engine, message_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Generated mails, some of which make the parser fail (a fault planted for mails
    carrying ``X-Fuzz-Fault``, standing for the parser bugs not yet found): each of those
    ends "error", the others of its batch as they read."""
    real = dsn._parse_message

    def planted(message: Message, depth: int = 0) -> dsn.Report:
        if message.get("X-Fuzz-Fault"):
            raise LookupError("planted parser fault")
        return real(message, depth)

    monkeypatch.setattr(dsn, "_parse_message", planted)

    @_bounded
    @given(mails=st.lists(st.tuples(st.booleans(), _mime()), min_size=1, max_size=4))
    def generated(mails: list[tuple[bool, bytes]]) -> None:
        raws = [b"X-Fuzz-Fault: 1\r\n" + raw if fault else raw for fault, raw in mails]
        states = _outcomes(parts, engine, message_id, raws)
        assert [s for s, (fault, _raw) in zip(states, mails, strict=True) if fault] == [
            inbound_queue.ERROR for fault, _raw in mails if fault
        ]

    generated()


# endregion
