"""Figure 5: inbound bounce mails per second, received over SMTP by ``postwarden inbound``,
stored, parsed, classified and applied (each a hard bounce for a message that was delivered),
sent by a client process over four reused connections; and the parser alone (one core,
``postwarden.inbound.scoring.measure_rate`` as used by bench/parser.py). The reference is
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

CLIENT = """\
import asyncio, json, sys
import aiosmtplib
jobs = json.load(open(sys.argv[1])); port = int(sys.argv[2])
async def worker(part):
    c = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await c.connect()
    for rcpt, raw in part:
        await c.sendmail("", [rcpt], raw.encode())
    await c.quit()
async def main():
    await asyncio.gather(*(worker(jobs[i::4]) for i in range(4)))
asyncio.run(main())
"""


def run(report: common.Report, n: int, workdir: Path, limit: float | None) -> None:
    from sqlalchemy import func, select, update

    from postwarden import verp
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
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", CLIENT, str(job_file), str(port)], check=True)
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
        from postwarden.inbound.scoring import measure_rate
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
