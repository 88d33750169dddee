"""Figure 8: SMS through the loopback SMSC (SMPP 3.4), one Postwarden process.

N stored SMS messages claimed from SQLite in batches, built by the SMS channel (number
normalised, segments counted, text and sender read from the database) and sent over one
transceiver bind until every message has its verdict; the delivery receipts the SMSC sends
back are parsed and handed on meanwhile. The floor, measured in the same run against the same
SMSC (a separate process): a bare loop of the same SMPP library, aiosmpplib's own ``ESME``,
sending the same N texts and counting the submit_sm_resp."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from bench import common

WINDOW = 50
TEXT = "Your verification code is 428913. It expires in 10 minutes."


def _start_smsc() -> tuple[subprocess.Popen[bytes], int]:
    port = common.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "postwarden.testing.smsc", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    common.wait_port(port)
    return proc, port


def _numbers(n: int) -> list[str]:
    return [f"+1202555{1000 + i % 9000:04d}" for i in range(n)]


async def _floor(port: int, n: int) -> float:
    """aiosmpplib's ESME: enqueue N submit_sm, count the responses."""
    from aiosmpplib import ESME, AbstractHook, PhoneNumber, SubmitSm, SubmitSmResp
    from aiosmpplib.broker import SimpleBroker
    from aiosmpplib.log import ERROR

    done = asyncio.Event()
    count = 0

    class Counter(AbstractHook):
        async def sending(self, smpp_message, pdu, client_id):  # type: ignore[no-untyped-def]
            pass

        async def received(self, smpp_message, pdu, client_id):  # type: ignore[no-untyped-def]
            nonlocal count
            if isinstance(smpp_message, SubmitSmResp):
                count += 1
                if count >= n:
                    done.set()

        async def send_error(self, smpp_message, error, client_id):  # type: ignore[no-untyped-def]
            pass

    esme = ESME(
        smsc_host="127.0.0.1",
        smsc_port=port,
        system_id="postwarden",
        password="secret",
        hook=Counter(),
        broker=SimpleBroker(maxsize=n + 1),
        log_level=ERROR,
    )
    for number in _numbers(n):
        await esme.broker.enqueue(
            SubmitSm(
                short_message=TEXT,
                source=PhoneNumber("Acme"),
                destination=PhoneNumber(number[1:]),
            )
        )
    t0 = time.perf_counter()
    task = asyncio.ensure_future(esme.start())
    await asyncio.wait_for(done.wait(), timeout=max(60.0, n / 100))
    elapsed = time.perf_counter() - t0
    await esme.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return n / elapsed


async def _postwarden(port: int, n: int, workdir: Path) -> tuple[float, int, int]:
    """Returns (messages per second, messages sent, receipts handed on)."""
    from sqlalchemy import insert

    from postwarden.domain import clock
    from postwarden.outbound.channels import base
    from postwarden.outbound.channels.sms import channel as sms_channel
    from postwarden.settings import Settings, SMSSettings
    from postwarden.store import db, queue
    from postwarden.store import tables as t

    with common.sqlite_db(workdir, "sms") as url:
        engine, account, _key = common.prepare(url)
        now = clock.now()
        with engine.begin() as conn:
            content = conn.scalar(
                insert(t.contents)
                .values(
                    account_id=account.id,
                    from_addr="",
                    subject="",
                    text=TEXT,
                    headers={},
                    created_at=now,
                )
                .returning(t.contents.c.id)
            )
            conn.execute(
                insert(t.messages),
                [
                    {
                        "account_id": account.id,
                        "content_id": content,
                        "channel": "sms",
                        "to_addr": number,
                        "status": "pending",
                        "flags": [],
                        "metadata": {},
                        "next_attempt_at": now,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for number in _numbers(n)
                ],
            )
        receipts = 0

        async def on_event(event: object) -> None:
            nonlocal receipts
            receipts += 1

        settings = Settings(
            database_url=url,
            sms=SMSSettings(
                provider=f"smpp://postwarden:secret@127.0.0.1:{port}?source=Acme", window=WINDOW
            ),
        )
        channel = sms_channel.open_channel(settings, on_event=on_event)
        sent = 0
        t0 = time.perf_counter()
        while True:
            claimed, built = await asyncio.to_thread(_claim_and_build, engine, channel, queue, db)
            if not claimed:
                break
            outgoing = [b for b in built if isinstance(b, base.Outgoing)]
            verdicts = await channel.send(outgoing)
            sent += sum(v.outcome == "sent" for v in verdicts)
        elapsed = time.perf_counter() - t0
        await asyncio.sleep(0.5)  # the last receipts
        await channel.aclose()
        engine.dispose()
    return n / elapsed, sent, receipts


def _claim_and_build(engine, channel, queue, db):  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from postwarden.domain import clock

    with engine.begin() as conn:
        claimed = queue.claim_batch(
            conn,
            owner="bench",
            limit=500,
            lease=timedelta(seconds=120),
            now=clock.now(),
            channel="sms",
        )
    if not claimed:
        return [], []
    with db.reader(engine).connect() as conn:
        return claimed, channel.build(conn, claimed)


def run(report: common.Report, n: int, workdir: Path) -> None:
    proc, port = _start_smsc()
    try:
        floors, rates = [], []
        sent = got = 0
        for _ in range(2):  # alternating: the machine's speed drifts within a minute
            floors.append(asyncio.run(_floor(port, n)))
            rate, sent, got = asyncio.run(_postwarden(port, n, workdir))
            rates.append(rate)
    finally:
        proc.terminate()
        proc.wait(10)
    floor, rate = sum(floors) / len(floors), sum(rates) / len(rates)
    report.note(
        f"SMSC in its own process; Postwarden window {WINDOW}, batches of 500 claimed from "
        f"SQLite; rounds: aiosmpplib ESME {', '.join(f'{f:,.0f}' for f in floors)}, "
        f"Postwarden {', '.join(f'{r:,.0f}' for r in rates)} msgs/s"
    )
    exact = "every message sent" if sent == n else f"ONLY {sent} OF {n} SENT"
    report.add(
        common.Figure(
            "sms smpp one process",
            rate,
            "msgs/s",
            "aiosmpplib ESME loop",
            floor,
            ">= 50% of the library's loop",
            f"N={n:,}; {exact}; {got:,} receipts handed on",
        )
    )
