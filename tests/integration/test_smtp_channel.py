"""SMTPChannel against real SMTP servers on loopback (the Simulator and a few odd servers)."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from servers import RawServer

from postwarden.outbound.channels.base import AttemptResult, Outgoing
from postwarden.outbound.channels.email.smtp import SMTPChannel, SMTPConfig
from postwarden.testing.simulator import Simulator, build_dsn, free_port

SENDER = "b+Xy12ab@bounce.example.com"
BODY_MARKER = "the-secret-body-line"


def make(i: int, rcpt: str, sender: str = SENDER) -> Outgoing:
    data = (
        f"From: Shop <shop@example.com>\r\nTo: <{rcpt}>\r\nSubject: Order {i}\r\n"
        f"Message-ID: <m{i}@example.com>\r\n\r\n{BODY_MARKER}\r\n"
    ).encode()
    return Outgoing(message_id=i, mail_from=sender, rcpt=rcpt, data=data)


def config(port: int, domain: str = "example.test", **kw: Any) -> SMTPConfig:
    return SMTPConfig(routes={domain: ("127.0.0.1", port)}, helo_name="pw.test", **kw)


@pytest.fixture
async def sink() -> AsyncIterator[Simulator]:
    async with Simulator() as s:
        yield s


@pytest.fixture
async def sim(sink: Simulator) -> AsyncIterator[Simulator]:
    async with Simulator(
        greylist_delay=0.2,
        slow_delay=2.0,
        late_bounce_delay=0.1,
        bounce_target=("127.0.0.1", sink.port),
    ) as s:
        yield s


async def send(cfg: SMTPConfig, domain: str, batch: list[Outgoing]) -> list[AttemptResult]:
    channel = SMTPChannel(cfg)
    try:
        return await channel.send_many(domain, batch)
    finally:
        await channel.aclose()


# region odd servers


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("neither the cryptography package nor the openssl CLI is available")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


class RelayServer:
    """aiosmtpd relay requiring STARTTLS and AUTH PLAIN, counting connections."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.connections = 0
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert session.authenticated
        self.messages.append((envelope.mail_from or "", list(envelope.rcpt_tos), envelope.content))  # type: ignore[arg-type]
        return "250 2.0.0 Ok: relayed"

    @staticmethod
    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data == (b"user", b"s3cret")
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends 535

    async def __aenter__(self) -> RelayServer:
        loop = asyncio.get_running_loop()
        relay = self

        class Counting(SMTP):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                if self._original_transport is None and self.transport is None:
                    relay.connections += 1
                super().connection_made(transport)

        self.server = await loop.create_server(
            lambda: Counting(
                self,
                hostname="relay.test",
                tls_context=self.ctx,
                require_starttls=True,
                auth_required=True,
                authenticator=self.authenticate,
                loop=loop,
            ),
            "127.0.0.1",
            0,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


# endregion


async def test_delivered_via_route(sim: Simulator) -> None:
    results = await send(config(sim.port), "example.test", [make(1, "alice@example.test")])
    (r,) = results
    assert (r.outcome, r.code, r.enhanced, r.via) == ("accepted", 250, "2.0.0", "mx")
    assert r.remote == f"127.0.0.1:{sim.port}"
    assert r.started_at.tzinfo is not None and r.duration_ms >= 0
    assert [(e.mail_from, e.rcpt_tos) for e in sim.received] == [(SENDER, ("alice@example.test",))]
    assert BODY_MARKER.encode() in sim.received[0].data


async def test_route_matches_subdomains_with_leading_dot(sim: Simulator) -> None:
    cfg = SMTPConfig(routes={".corp.test": ("127.0.0.1", sim.port)}, helo_name="pw.test")
    (r,) = await send(cfg, "eu.corp.test", [make(1, "bob@eu.corp.test")])
    assert r.outcome == "accepted"


async def test_recipient_replies_map_to_outcomes(sim: Simulator) -> None:
    batch = [
        make(1, "unknown-x@example.test"),
        make(2, "full@example.test"),
        make(3, "spam@example.test"),
        make(4, "ok@example.test"),
    ]
    r = await send(config(sim.port), "example.test", batch)
    assert [x.message_id for x in r] == [1, 2, 3, 4]
    assert (r[0].outcome, r[0].code, r[0].enhanced) == ("permanent", 550, "5.1.1")
    assert "User unknown" in r[0].text
    assert (r[1].outcome, r[1].code, r[1].enhanced) == ("temporary", 452, "4.2.2")
    assert (r[2].outcome, r[2].code, r[2].enhanced) == ("permanent", 554, "5.7.1")
    assert "C: <message" in r[2].transcript  # refused after the data, like a content filter
    assert "S: 354" not in r[2].transcript
    assert r[3].outcome == "accepted"
    assert sim.counters["connections"] == 1  # RSET after refusals, same connection


async def test_greylisted_then_accepted_on_retry(sim: Simulator) -> None:
    cfg = config(sim.port)
    (first,) = await send(cfg, "example.test", [make(1, "grey@example.test")])
    assert (first.outcome, first.code, first.enhanced) == ("temporary", 451, "4.7.1")
    await asyncio.sleep(0.25)
    (again,) = await send(cfg, "example.test", [make(1, "grey@example.test")])
    assert again.outcome == "accepted"


async def test_mx_lookup_through_dns_responder(sim: Simulator) -> None:
    cfg = SMTPConfig(
        dns_nameserver=("127.0.0.1", sim.dns_port), mx_port=sim.port, helo_name="pw.test"
    )
    channel = SMTPChannel(cfg)
    (r,) = await channel.send_many("example.test", [make(1, "a@example.test")])
    assert (r.outcome, r.via, r.remote) == ("accepted", "mx", f"127.0.0.1:{sim.port}")
    (r,) = await channel.send_many("amx.test", [make(2, "a@amx.test")])  # implicit MX
    assert r.outcome == "accepted"
    (r,) = await channel.send_many("servfail.test", [make(3, "a@servfail.test")])
    assert (r.outcome, r.enhanced) == ("temporary", "4.4.3")
    await channel.aclose()


async def test_null_mx_is_permanent(sim: Simulator) -> None:
    cfg = SMTPConfig(dns_nameserver=("127.0.0.1", sim.dns_port), helo_name="pw.test")
    (r,) = await send(cfg, "nullmx.test", [make(1, "a@nullmx.test")])
    assert (r.outcome, r.code, r.enhanced) == ("permanent", None, "5.1.10")
    assert r.text == "the recipient domain does not accept mail (null MX)"
    assert r.remote is None


async def test_nxdomain_is_permanent(sim: Simulator) -> None:
    cfg = SMTPConfig(dns_nameserver=("127.0.0.1", sim.dns_port), helo_name="pw.test")
    results = await send(
        cfg, "nowhere.test", [make(1, "a@nowhere.test"), make(2, "b@nowhere.test")]
    )
    assert [(r.outcome, r.code, r.enhanced) for r in results] == [("permanent", None, "5.1.2")] * 2
    assert results[0].text == "the recipient domain does not exist"


async def test_connection_refused_is_temporary() -> None:
    port = free_port()
    (r,) = await send(config(port), "example.test", [make(1, "a@example.test")])
    assert (r.outcome, r.code) == ("temporary", None)
    assert r.text == f"connection refused by 127.0.0.1:{port}"


async def test_drop_mid_data_then_rest_delivered_on_fresh_connection() -> None:
    async with RawServer() as raw:
        batch = [make(i, f"{p}{i}@example.test") for i, p in enumerate("aadaa")]
        batch[2] = make(2, "drop@example.test")
        r = await send(config(raw.port), "example.test", batch)
    assert [x.outcome for x in r] == ["accepted", "accepted", "temporary", "accepted", "accepted"]
    assert r[2].code is None and "lost during DATA" in r[2].text
    assert raw.delivered == [
        "a0@example.test",
        "a1@example.test",
        "a3@example.test",
        "a4@example.test",
    ]
    assert raw.connections == 2


async def test_421_closes_connection_rest_temporary() -> None:
    async with RawServer() as raw:
        batch = [make(1, "a@example.test"), make(2, "bye@example.test"), make(3, "c@example.test")]
        r = await send(config(raw.port), "example.test", batch)
    assert [(x.outcome, x.code) for x in r] == [
        ("accepted", 250),
        ("temporary", 421),
        ("temporary", 421),
    ]
    assert r[2].text.startswith("not attempted")
    assert raw.connections == 1


async def test_silent_server_times_out_as_temporary() -> None:
    async with RawServer(mode="silent") as raw:
        cfg = config(raw.port, connect_timeout=0.5, command_timeout=0.5, data_timeout=0.5)
        t0 = time.monotonic()
        r = await send(cfg, "example.test", [make(1, "a@example.test"), make(2, "b@example.test")])
        elapsed = time.monotonic() - t0
    assert [(x.outcome, x.code) for x in r] == [("temporary", None)] * 2
    assert "timed out after 0.5 s waiting for the greeting" in r[0].text
    assert elapsed < 2


async def test_slow_data_reply_times_out_and_rest_goes_on(sim: Simulator) -> None:
    cfg = config(sim.port, data_timeout=0.5)
    t0 = time.monotonic()
    r = await send(cfg, "example.test", [make(1, "slow@example.test"), make(2, "b@example.test")])
    assert time.monotonic() - t0 < 1.8
    assert (r[0].outcome, r[0].code) == ("temporary", None)
    assert r[0].text == "timed out after 0.5 s waiting for the reply to DATA"
    assert r[1].outcome == "accepted"


async def test_relay_starttls_auth_one_connection(tls_cert: tuple[Path, Path]) -> None:
    async with RelayServer(*tls_cert) as relay:
        cfg = SMTPConfig(
            relay=f"smtp://user:s3cret@127.0.0.1:{relay.port}",
            tls_ca_file=str(tls_cert[0]),
            helo_name="pw.test",
        )
        batch = [make(i, f"user{i}@gmail.test") for i in range(20)]
        results = await send(cfg, "gmail.test", batch)
    assert [(r.outcome, r.via) for r in results] == [("accepted", "relay")] * 20
    assert relay.connections == 1
    assert len(relay.messages) == 20
    t = results[0].transcript
    assert "C: STARTTLS" in t and "S: 220" in t
    assert t.count("C: EHLO pw.test") == 2
    assert "C: AUTH PLAIN ****" in t and "S: 235" in t
    assert "s3cret" not in t and base64.b64encode(b"\0user\0s3cret").decode() not in t
    for expected in ("C: MAIL FROM:<", "C: RCPT TO:<user0@gmail.test>", "C: DATA", "S: 250 "):
        assert expected in t
    assert BODY_MARKER not in t
    assert "C: QUIT" in results[-1].transcript


async def test_relay_bad_password_is_temporary(tls_cert: tuple[Path, Path]) -> None:
    async with RelayServer(*tls_cert) as relay:
        cfg = SMTPConfig(
            relay=f"smtp://user:wrong@127.0.0.1:{relay.port}",
            tls_ca_file=str(tls_cert[0]),
            helo_name="pw.test",
            command_timeout=2,
        )
        (r,) = await send(cfg, "gmail.test", [make(1, "a@gmail.test")])
    assert (r.outcome, r.code, r.via) == ("temporary", 535, "relay"), r.transcript
    assert "wrong" not in r.transcript


async def test_transcript_contents(sim: Simulator) -> None:
    (r,) = await send(config(sim.port), "example.test", [make(1, "a@example.test")])
    lines = r.transcript.splitlines()
    assert lines[0].endswith(f"connect 127.0.0.1:{sim.port}")
    for expected in (
        "S: 220 ",
        "C: EHLO pw.test",
        "S: 250-",
        f"C: MAIL FROM:<{SENDER}>",
        "C: RCPT TO:<a@example.test>",
        "S: 250 2.1.5",
        "C: DATA",
        f"C: <message {len(make(1, 'a@example.test').data)} bytes>",
        "S: 250 2.0.0 Ok: queued",
        "C: QUIT",
    ):
        assert any(expected in line for line in lines), expected
    assert BODY_MARKER not in r.transcript


async def test_per_domain_concurrency_bound() -> None:
    async with RawServer(data_delay=0.02) as raw:
        cfg = config(raw.port, per_domain_concurrency=2, messages_per_connection=5)
        channel = SMTPChannel(cfg)
        batch = [make(i, f"u{i}@example.test") for i in range(30)]
        one, two = await asyncio.gather(
            channel.send_many("example.test", batch[:20]),
            channel.send_many("example.test", batch[20:]),
        )
        await channel.aclose()
    assert [r.message_id for r in one + two] == list(range(30))
    assert all(r.outcome == "accepted" for r in one + two)
    assert raw.connections == 6
    assert raw.max_active == 2


async def test_late_bounce_dsn_reaches_bounce_target(sim: Simulator, sink: Simulator) -> None:
    (r,) = await send(config(sim.port), "example.test", [make(7, "latebounce@example.test")])
    assert r.outcome == "accepted"
    for _ in range(100):
        if sink.received:
            break
        await asyncio.sleep(0.02)
    (env,) = sink.received
    assert env.mail_from == "" and env.rcpt_tos == (SENDER,)
    msg = email.message_from_bytes(env.data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = [p.get_content_type() for p in msg.iter_parts()]
    assert parts == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    raw = env.data.decode()
    assert "Action: failed" in raw and "Status: 5.1.1" in raw
    assert "Diagnostic-Code: smtp; 550 5.1.1 <latebounce@example.test>" in raw
    assert "Subject: Order 7" in raw and BODY_MARKER not in raw


def test_build_dsn_is_parseable() -> None:
    original = make(3, "x@example.test").data
    dsn = build_dsn(
        reporting_mta="mx.example.test",
        original=original,
        recipient="x@example.test",
        status="4.2.2",
        diagnostic="452 4.2.2 Mailbox full",
        action="delayed",
    )
    assert b"\r\n" in dsn and b"\n" not in dsn.replace(b"\r\n", b"")
    msg = email.message_from_bytes(dsn, policy=email.policy.default)
    assert msg["To"] == "shop@example.com"
    status = next(p for p in msg.iter_parts() if p.get_content_type() == "message/delivery-status")
    blocks = status.get_payload()
    assert blocks[0]["Reporting-MTA"] == "dns; mx.example.test"
    assert blocks[1]["Action"] == "delayed" and blocks[1]["Status"] == "4.2.2"
    assert blocks[1]["Diagnostic-Code"] == "smtp; 452 4.2.2 Mailbox full"


# region PIPELINING (RFC 2920): the same outcomes whether or not the server offers it


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
async def test_outcomes_with_and_without_pipelining(pipelining: bool) -> None:
    async with RawServer(pipelining=pipelining) as raw:
        rcpts = [
            "a@example.test",
            "unknown1@example.test",
            "b@example.test",
            "full1@example.test",
            "c@example.test",
        ]
        r = await send(
            config(raw.port), "example.test", [make(i, rcpt) for i, rcpt in enumerate(rcpts)]
        )
    assert [(x.outcome, x.code, x.enhanced) for x in r] == [
        ("accepted", 250, "2.0.0"),
        ("permanent", 550, "5.1.1"),
        ("accepted", 250, "2.0.0"),
        ("temporary", 452, "4.2.2"),
        ("accepted", 250, "2.0.0"),
    ]
    assert raw.delivered == ["a@example.test", "b@example.test", "c@example.test"]
    assert raw.connections == 1
    refused = r[1].transcript
    assert "C: RCPT TO:<unknown1@example.test>" in refused and "S: 550 5.1.1" in refused
    assert "<message" not in refused, "no body is sent after a refused recipient"
    assert BODY_MARKER.encode() not in b"".join(x.transcript.encode() for x in r)


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
async def test_bodies_go_out_dot_stuffed_with_crlf_line_ends(pipelining: bool) -> None:
    """RFC 5321 4.5.2: a line that starts with a dot gets a second one, so a line holding a
    single dot never ends the message early; bare CR and LF become CRLF; the last line gets
    its CRLF. The pipelined path writes the same bytes as aiosmtplib's."""
    bodies = [
        b"Subject: dots\r\n\r\n.starts with a dot\n..two dots\r\n.\rlone CR\r\nno end",
        b".\r\nSubject: first line\r\n\r\nbody\r\n",
    ]
    async with RawServer(pipelining=pipelining) as raw:
        r = await send(
            config(raw.port),
            "example.test",
            [Outgoing(i, SENDER, f"r{i}@example.test", data) for i, data in enumerate(bodies)],
        )
    assert [x.outcome for x in r] == ["accepted", "accepted"]
    assert raw.data == [
        b"Subject: dots\r\n\r\n..starts with a dot\r\n...two dots\r\n..\r\nlone CR\r\nno end\r\n",
        b"..\r\nSubject: first line\r\n\r\nbody\r\n",
    ]


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
async def test_drop_and_421_with_and_without_pipelining(pipelining: bool) -> None:
    async with RawServer(pipelining=pipelining) as raw:
        batch = [
            make(1, "a@example.test"),
            make(2, "drop@example.test"),
            make(3, "b@example.test"),
            make(4, "bye@example.test"),
            make(5, "c@example.test"),
        ]
        r = await send(config(raw.port, command_timeout=1, data_timeout=1), "example.test", batch)
    assert [x.outcome for x in r] == ["accepted", "temporary", "accepted", "temporary", "temporary"]
    assert r[1].code is None and r[3].code == 421
    assert raw.delivered == ["a@example.test", "b@example.test"]
