"""Figure 5: inbound bounce mails per second, received over SMTP by ``postwarden inbound``,
stored, parsed, classified and applied (each a hard bounce for a message that was delivered),
sent by a client process over four reused connections; and the parser alone (one core,
``postwarden.testing.scoring.measure_rate`` as used by bench/parser.py). The reference is
smtp-source into smtp-sink on the same machine (the limit for mails over SMTP)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench import common

# Each mail has a boundary of its own, as real bounces do: one shared boundary would let the
# parser reuse what it derived from it for the previous mail.
DSN = """\
From: MAILER-DAEMON@{domain}
To: {rcpt}
Subject: Undelivered Mail Returned to Sender
Date: Sun, 22 Nov 2026 10:00:00 +0000
Message-ID: <dsn{i}@{domain}>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="=_{i}.dsn"

--=_{i}.dsn
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.

--=_{i}.dsn
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.{domain}

Final-Recipient: rfc822; {to}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <{to}>: Recipient address rejected: User unknown

--=_{i}.dsn
Content-Type: text/rfc822-headers

To: {to}
Subject: Your weekly report

--=_{i}.dsn--
"""

# The load generator: four sessions on plain sockets, one thread each, one command and its
# reply at a time (the server offers no PIPELINING), checking every reply. aiosmtplib spent
# about 370 µs of CPU per mail on the same two cores, and its start-up fell inside the timing;
# this client connects and greets first, says "ready" and sends on "go".
CLIENT = """\
import json, socket, sys, threading
jobs = json.load(open(sys.argv[1])); port = int(sys.argv[2])
def reply(sock, buf, expect):
    while True:
        end = buf.find(b"\\r\\n")
        while end < 0:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("connection closed")
            buf += chunk
            end = buf.find(b"\\r\\n")
        line, buf = buf[:end], buf[end + 2:]
        if line[3:4] != b"-":
            if not line.startswith(expect):
                raise OSError(f"unexpected reply {line!r}")
            return buf
sessions = []
for _ in range(4):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = reply(sock, b"", b"220")
    sock.sendall(b"EHLO bench.test\\r\\n")
    sessions.append((sock, reply(sock, buf, b"250")))
print("ready", flush=True)
sys.stdin.readline()
failed = []
def send(sock, buf, part):
    try:
        deliver(sock, buf, part)
    except OSError as exc:
        failed.append(exc)
def deliver(sock, buf, part):
    for rcpt, raw in part:
        body = raw.encode().replace(b"\\r\\n.", b"\\r\\n..")
        body = b"." + body if body.startswith(b".") else body
        rcpt_to = b"RCPT TO:<" + rcpt.encode() + b">"
        for command, expect in ((b"MAIL FROM:<>", b"250"), (rcpt_to, b"250"), (b"DATA", b"354")):
            sock.sendall(command + b"\\r\\n")
            buf = reply(sock, buf, expect)
        sock.sendall(body + b".\\r\\n")
        buf = reply(sock, buf, b"250")
    sock.sendall(b"QUIT\\r\\n")
threads = [threading.Thread(target=send, args=(*sessions[i], jobs[i::4])) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
sys.exit(f"load generator: {failed[0]}" if failed else 0)
"""


def run(report: common.Report, n: int, workdir: Path, limit: float | None) -> None:
    from sqlalchemy import func, select, update

    from postwarden.domain import verp
    from postwarden.store import tables as t

    with common.sqlite_db(workdir, "inbound") as url:
        engine, account, _key = common.prepare(url)
        common.seed_pending(engine, account, n)
        with engine.begin() as conn:
            conn.execute(update(t.messages).values(status="sent", attempts=1))
            rows = conn.execute(select(t.messages.c.id, t.messages.c.to_addr)).all()
        jobs = [
            (
                f"{verp.PREFIX}{verp.token(common.SECRET.encode(), mid)}@bounces.bench.test",
                DSN.format(
                    domain=common.SINK_DOMAIN, i=i, to=to, rcpt="bench@bounces.bench.test"
                ).replace("\n", "\r\n"),
            )
            for i, (mid, to) in enumerate(rows)
        ]
        job_file = workdir / "inbound-jobs.json"
        job_file.write_text(json.dumps(jobs))
        env = common.postwarden_env(url)
        port = int(env["POSTWARDEN_INBOUND_PORT"])
        proc = common.start(["inbound"], env, workdir / "inbound.log")
        try:
            common.wait_port(port)
            client = subprocess.Popen(
                [sys.executable, "-c", CLIENT, str(job_file), str(port)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert client.stdout is not None and client.stdin is not None
            if client.stdout.readline().strip() != "ready":
                raise RuntimeError("the inbound load generator did not start")
            t0 = time.perf_counter()
            client.stdin.write("go\n")
            client.stdin.close()
            if client.wait() != 0:
                raise RuntimeError("the inbound load generator failed")
            deadline = time.perf_counter() + max(60, n / 20)
            while time.perf_counter() < deadline:
                with engine.connect() as conn:
                    left = conn.scalar(
                        select(func.count())
                        .select_from(t.inbound_mails)
                        .where(t.inbound_mails.c.state.in_(("new", "processing")))
                    )
                    stored = conn.scalar(select(func.count()).select_from(t.inbound_mails))
                if stored >= n and not left:
                    break
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
        finally:
            common.stop(proc)
        with engine.connect() as conn:
            bounced = conn.scalar(select(func.count()).where(t.messages.c.status == "bounced"))
        engine.dispose()
    report.add(
        common.Figure(
            "inbound bounces over SMTP, applied",
            n / elapsed,
            "msgs/s",
            "smtp-source" if limit else "",
            limit,
            ">= 1,000",
            f"N={n:,}; "
            + ("every message now bounced" if bounced == n else f"ONLY {bounced:,} BOUNCED"),
        )
    )
    try:
        from bench.parser import DEFAULT_CORPUS
        from postwarden.testing.scoring import measure_rate
    except ImportError as exc:
        report.note(f"parser figure skipped: {exc}")
        return
    if not (DEFAULT_CORPUS / "expected.jsonl").exists():
        report.note(f"parser figure skipped: no corpus at {DEFAULT_CORPUS}")
        return
    count, seconds = measure_rate(DEFAULT_CORPUS, 1.0)
    report.add(
        common.Figure(
            "inbound parser alone (one core, shared corpus)",
            count / seconds,
            "msgs/s",
            target=">= 2,000",
        )
    )
