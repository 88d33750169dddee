"""The email channel's SMTP sender against real SMTP servers on loopback (the Simulator and a
few odd servers). How its attempts are judged: tests/unit/test_email_verdicts.py."""

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

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from servers import RawServer

from postwarden.outbound.channels.base import Outgoing
from postwarden.outbound.channels.email import pipelining
from postwarden.outbound.channels.email.smtp import Attempt, Email, Mail, SMTPSender
from postwarden.settings import SMTPSettings
from postwarden.testing.simulator import Simulator, build_dsn, free_port

SENDER = "b+Xy12ab@bounce.example.com"
BODY_MARKER = "the-secret-body-line"


def make(i: int, rcpt: str, sender: str = SENDER) -> Email:
    data = (
        f"From: Shop <shop@example.com>\r\nTo: <{rcpt}>\r\nSubject: Order {i}\r\n"
        f"Message-ID: <m{i}@example.com>\r\n\r\n{BODY_MARKER}\r\n"
    ).encode()
    return Outgoing(i, rcpt, Mail(sender, data))


def config(port: int, domain: str = "example.test", **kw: Any) -> SMTPSettings:
    return SMTPSettings(routes={domain: ("127.0.0.1", port)}, **kw)


def sender(cfg: SMTPSettings) -> SMTPSender:
    return SMTPSender(cfg, helo_name="pw.test")


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


async def send(cfg: SMTPSettings, batch: list[Email]) -> list[Attempt]:
    """``batch`` sent as the email channel sends it (grouped by next hop)."""
    channel = sender(cfg)
    try:
        return await channel.send(batch)
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


class PipeliningRelay(RelayServer):
    """The relay offering PIPELINING, as Postfix and the providers' relays do, and naming its
    queue id in the 250 reply to DATA."""

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await super().handle_DATA(server, session, envelope)
        return f"250 2.0.0 Ok: queued as R{len(self.messages)}"


# endregion


async def test_delivered_via_route(sim: Simulator) -> None:
    results = await send(config(sim.port), [make(1, "alice@example.test")])
    (r,) = results
    assert (r.outcome, r.code, r.enhanced, r.via) == ("accepted", 250, "2.0.0", "mx")
    assert r.remote == f"127.0.0.1:{sim.port}"
    assert r.started_at.tzinfo is not None and r.duration_ms >= 0
    assert [(e.mail_from, e.rcpt_tos) for e in sim.received] == [(SENDER, ("alice@example.test",))]
    assert BODY_MARKER.encode() in sim.received[0].data


async def test_route_matches_subdomains_with_leading_dot(sim: Simulator) -> None:
    cfg = SMTPSettings(routes={".corp.test": ("127.0.0.1", sim.port)})
    (r,) = await send(cfg, [make(1, "bob@eu.corp.test")])
    assert r.outcome == "accepted"


async def test_recipient_replies_map_to_outcomes(sim: Simulator) -> None:
    batch = [
        make(1, "unknown-x@example.test"),
        make(2, "full@example.test"),
        make(3, "spam@example.test"),
        make(4, "ok@example.test"),
    ]
    r = await send(config(sim.port), batch)
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
    (first,) = await send(cfg, [make(1, "grey@example.test")])
    assert (first.outcome, first.code, first.enhanced) == ("temporary", 451, "4.7.1")
    await asyncio.sleep(0.25)
    (again,) = await send(cfg, [make(1, "grey@example.test")])
    assert again.outcome == "accepted"


async def test_mx_lookup_through_dns_responder(sim: Simulator) -> None:
    cfg = SMTPSettings(dns_server=("127.0.0.1", sim.dns_port), mx_port=sim.port)
    channel = sender(cfg)
    (r,) = await channel.send_many("example.test", [make(1, "a@example.test")])
    assert (r.outcome, r.via, r.remote) == ("accepted", "mx", f"127.0.0.1:{sim.port}")
    (r,) = await channel.send_many("amx.test", [make(2, "a@amx.test")])  # implicit MX
    assert r.outcome == "accepted"
    (r,) = await channel.send_many("servfail.test", [make(3, "a@servfail.test")])
    assert (r.outcome, r.enhanced) == ("temporary", "4.4.3")
    await channel.aclose()


async def test_null_mx_is_permanent(sim: Simulator) -> None:
    cfg = SMTPSettings(dns_server=("127.0.0.1", sim.dns_port))
    (r,) = await send(cfg, [make(1, "a@nullmx.test")])
    assert (r.outcome, r.code, r.enhanced) == ("permanent", None, "5.1.10")
    assert r.text == "the recipient domain does not accept mail (null MX)"
    assert r.remote is None


async def test_nxdomain_is_permanent(sim: Simulator) -> None:
    cfg = SMTPSettings(dns_server=("127.0.0.1", sim.dns_port))
    results = await send(cfg, [make(1, "a@nowhere.test"), make(2, "b@nowhere.test")])
    assert [(r.outcome, r.code, r.enhanced) for r in results] == [("permanent", None, "5.1.2")] * 2
    assert results[0].text == "the recipient domain does not exist"


async def test_connection_refused_is_temporary() -> None:
    port = free_port()
    (r,) = await send(config(port), [make(1, "a@example.test")])
    assert (r.outcome, r.code) == ("temporary", None)
    assert r.text == f"connection refused by 127.0.0.1:{port}"


async def test_drop_mid_data_then_rest_delivered_on_fresh_connection() -> None:
    async with RawServer() as raw:
        batch = [make(i, f"{p}{i}@example.test") for i, p in enumerate("aadaa")]
        batch[2] = make(2, "drop@example.test")
        r = await send(config(raw.port), batch)
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
        r = await send(config(raw.port), batch)
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
        r = await send(cfg, [make(1, "a@example.test"), make(2, "b@example.test")])
        elapsed = time.monotonic() - t0
    assert [(x.outcome, x.code) for x in r] == [("temporary", None)] * 2
    assert "timed out after 0.5 s waiting for the greeting" in r[0].text
    assert elapsed < 2


async def test_slow_data_reply_times_out_and_rest_goes_on(sim: Simulator) -> None:
    cfg = config(sim.port, data_timeout=0.5)
    t0 = time.monotonic()
    r = await send(cfg, [make(1, "slow@example.test"), make(2, "b@example.test")])
    assert time.monotonic() - t0 < 1.8
    assert (r[0].outcome, r[0].code) == ("temporary", None)
    assert r[0].text == "timed out after 0.5 s waiting for the reply to DATA"
    assert r[1].outcome == "accepted"


async def test_relay_starttls_auth_one_connection(tls_cert: tuple[Path, Path]) -> None:
    async with RelayServer(*tls_cert) as relay:
        cfg = SMTPSettings(
            relay=f"smtp://user:s3cret@127.0.0.1:{relay.port}",
            tls_ca_file=str(tls_cert[0]),
        )
        batch = [make(i, f"user{i}@gmail.test") for i in range(20)]
        results = await send(cfg, batch)
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


async def test_relay_is_one_next_hop_for_every_domain(tls_cert: tuple[Path, Path]) -> None:
    """Through a relay, messages are grouped by next hop (the relay), not by recipient domain:
    30 domains share the relay's connections instead of opening one each."""
    async with RelayServer(*tls_cert) as relay:
        cfg = SMTPSettings(
            relay=f"smtp://user:s3cret@127.0.0.1:{relay.port}",
            tls_ca_file=str(tls_cert[0]),
            messages_per_connection=20,
            per_domain_concurrency=2,
        )
        batch = [make(i, f"user@d{i}.test") for i in range(30)]
        results = await send(cfg, batch)
    assert [(r.message_id, r.outcome) for r in results] == [(i, "accepted") for i in range(30)]
    assert relay.connections == 2


async def test_direct_to_mx_one_next_hop_per_domain_in_order() -> None:
    async with RawServer() as one, RawServer() as two:
        cfg = SMTPSettings(
            routes={"one.test": ("127.0.0.1", one.port), "two.test": ("127.0.0.1", two.port)}
        )
        batch = [make(i, f"u{i}@{'one' if i % 2 else 'two'}.test") for i in range(6)]
        batch[3] = make(3, "unknown@one.test")
        r = await send(cfg, batch)
    assert [(x.message_id, x.outcome) for x in r] == [
        (0, "accepted"),
        (1, "accepted"),
        (2, "accepted"),
        (3, "permanent"),
        (4, "accepted"),
        (5, "accepted"),
    ]
    assert (one.connections, two.connections) == (1, 1)
    assert one.delivered == ["u1@one.test", "u5@one.test"]
    assert two.delivered == ["u0@two.test", "u2@two.test", "u4@two.test"]


async def test_relay_bad_password_is_temporary(tls_cert: tuple[Path, Path]) -> None:
    async with RelayServer(*tls_cert) as relay:
        cfg = SMTPSettings(
            relay=f"smtp://user:wrong@127.0.0.1:{relay.port}",
            tls_ca_file=str(tls_cert[0]),
            command_timeout=2,
        )
        (r,) = await send(cfg, [make(1, "a@gmail.test")])
    assert (r.outcome, r.code, r.via) == ("temporary", 535, "relay"), r.transcript
    assert "wrong" not in r.transcript


async def test_transcript_contents(sim: Simulator) -> None:
    (r,) = await send(config(sim.port), [make(1, "a@example.test")])
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
        f"C: <message {len(make(1, 'a@example.test').payload.data)} bytes>",
        "S: 250 2.0.0 Ok: queued",
        "C: QUIT",
    ):
        assert any(expected in line for line in lines), expected
    assert BODY_MARKER not in r.transcript


async def test_per_domain_concurrency_bound() -> None:
    async with RawServer(data_delay=0.02) as raw:
        cfg = config(raw.port, per_domain_concurrency=2, messages_per_connection=5)
        channel = sender(cfg)
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
    (r,) = await send(config(sim.port), [make(7, "latebounce@example.test")])
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
    original = make(3, "x@example.test").payload.data
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
        r = await send(config(raw.port), [make(i, rcpt) for i, rcpt in enumerate(rcpts)])
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
            [
                Outgoing(i, f"r{i}@example.test", Mail(SENDER, data))
                for i, data in enumerate(bodies)
            ],
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
        r = await send(config(raw.port, command_timeout=1, data_timeout=1), batch)
    assert [x.outcome for x in r] == ["accepted", "temporary", "accepted", "temporary", "temporary"]
    assert r[1].code is None and r[3].code == 421
    assert raw.delivered == ["a@example.test", "b@example.test"]


# endregion

# region the aiosmtplib adapter (pipelining.py): what it relies on, for the pinned versions


async def _session_over_tls(relay: RelayServer, cert: Path) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=relay.port,
        start_tls=False,
        tls_context=ssl.create_default_context(cafile=str(cert)),
    )
    await client.connect()
    await client.ehlo()
    await client.starttls()
    await client.ehlo()
    await client.auth_plain("user", "s3cret")
    return client


async def test_adapter_takes_over_a_tls_connection_and_reads_every_reply(
    tls_cert: tuple[Path, Path],
) -> None:
    async with PipeliningRelay(*tls_cert) as relay:
        client = await _session_over_tls(relay, tls_cert[0])
        assert client.supports_extension("pipelining")
        pipe = pipelining.take_over(client)
        assert pipe is not None, "aiosmtplib's transport can no longer be taken over"
        # Three commands in one write: aiosmtplib would drop the replies that come early.
        pipe.write(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        codes = [(await pipe.read(2))[0] for _ in range(3)]
        assert codes == [250, 250, 354]
        pipe.write(b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        assert await pipe.read(2) == (250, "2.0.0 Ok: queued as R1")
        assert (await pipe.read(2))[0] == 221
        client.close()
        assert pipe.transport.is_closing(), "SMTP.close() no longer closes the connection"
    assert relay.messages[0][:2] == ("a@x.test", ["b@y.test"])


async def test_adapter_takes_over_a_plain_connection() -> None:
    async with RawServer(pipelining=True) as raw:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=raw.port, start_tls=False)
        await client.connect()
        await client.ehlo()
        pipe = pipelining.take_over(client)
        assert pipe is not None
        pipe.write(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<unknown@y.test>\r\nRSET\r\n")
        assert [(await pipe.read(2))[0] for _ in range(3)] == [250, 550, 250]
        client.close()
        assert pipe.transport.is_closing()


async def test_sender_pipelines_through_a_tls_relay(tls_cert: tuple[Path, Path]) -> None:
    """The relay's path end to end: STARTTLS, AUTH, then pipelined transactions (MAIL, RCPT
    and DATA written together before any reply), each with the relay's queue id."""
    async with PipeliningRelay(*tls_cert) as relay:
        cfg = SMTPSettings(
            relay=f"smtp://user:s3cret@127.0.0.1:{relay.port}", tls_ca_file=str(tls_cert[0])
        )
        results = await send(cfg, [make(i, f"u{i}@d{i}.test") for i in range(3)])
    assert [(r.outcome, r.via, r.text) for r in results] == [
        ("accepted", "relay", f"2.0.0 Ok: queued as R{i + 1}") for i in range(3)
    ]
    assert relay.connections == 1
    first = results[0].transcript.splitlines()
    at = next(i for i, line in enumerate(first) if "C: MAIL FROM:" in line)
    assert [line.split(" ", 1)[1][:7] for line in first[at : at + 3]] == [
        "C: MAIL",
        "C: RCPT",
        "C: DATA",
    ]


# endregion
