"""``postwarden demo``: the whole pipeline on loopback, in about half a minute.

Starts Postwarden (API, dispatcher, inbound SMTP) on a fresh SQLite file and a recipient-side
simulator that answers like real receiving servers, sends a realistic broadcast through the
real API and over real SMTP, and shows what became of every message.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from postwarden import runtime, service
from postwarden.domain import status
from postwarden.settings import Settings
from postwarden.store import accounts, db, events, queries, suppression
from postwarden.testing.simulator import Simulator, free_port

FIRST = [
    "ann",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "niaj",
    "olivia",
    "peggy",
    "rupert",
    "sybil",
    "trent",
    "victor",
    "walter",
]
DOMAINS = ["example.test", "corp.test", "mail.test"]


def recipients(count: int, rng: random.Random) -> list[dict[str, Any]]:
    """Mostly good addresses, and the mistakes real lists contain, in realistic shares."""
    people = [f"{rng.choice(FIRST)}.{i}@{rng.choice(DOMAINS)}" for i in range(count)]
    odd = {
        0: "unknown.{i}@example.test",  # 550 5.1.1
        1: "full.{i}@corp.test",  # 452 4.2.2, retried until it expires
        2: "grey.{i}@mail.test",  # 451 4.7.1, accepted on retry
        3: "spam.{i}@example.test",  # 554 5.7.1 at the end of DATA
        4: "someone.{i}@nullmx.test",  # RFC 7505 null MX
        5: "latebounce.{i}@corp.test",  # accepted, then a DSN arrives
        6: "typo.{i}@@example.test",  # invalid
    }
    for n, i in enumerate(rng.sample(range(count), min(count, count // 6))):
        people[i] = odd[n % len(odd)].format(i=i)
    listed = [{"email": p} for p in people]
    for i in rng.sample(range(count), max(1, count // 50)):  # the same person twice
        listed.append({"email": people[i].upper()})
    return listed


async def _wait_until_settled(
    client: httpx.AsyncClient,
    parts: runtime.Parts,
    broadcast_id: int,
    total: int,
    late: int,
    progress: Progress,
    timeout: float,
) -> None:
    task = progress.add_task("delivering", total=total)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        counts = (await client.get(f"/v1/broadcasts/{broadcast_id}")).json()["counts"]
        settled = total - sum(counts.get(s, 0) for s in status.IN_FLIGHT_VALUES)
        progress.update(task, completed=settled)
        if settled >= total:
            with db.reader(parts.engine).connect() as conn:
                applied = events.count(conn, source="dsn")
            if applied >= late:
                return
        await asyncio.sleep(0.25)


def _summary(
    console: Console,
    detail: dict[str, Any],
    reasons: dict[str, dict[str, int]],
    later: int,
    suppressed: int,
) -> None:
    table = Table(title="What became of the broadcast", show_lines=False)
    table.add_column("status")
    table.add_column("messages", justify="right")
    table.add_column("why")
    for status_, n in sorted(detail["counts"].items(), key=lambda kv: -kv[1]):
        why = ", ".join(f"{r} {c}" for r, c in sorted(reasons.get(status_, {}).items()))
        table.add_row(status_, str(n), why)
    console.print(table)
    console.print(
        f"{later} delivered message(s) bounced later: a bounce mail reached the inbound server, "
        f"was matched by its VERP address and flagged them bounced_after_delivery. "
        f"{suppressed} address(es) are now on the suppression list."
    )


async def run(
    console: Console,
    *,
    database: Path,
    count: int,
    port: int,
    keep_running: bool,
    timeout: float = 120.0,
) -> None:
    for stale in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        stale.unlink(missing_ok=True)
    inbound_port = free_port()
    async with Simulator(
        greylist_delay=1.0, late_bounce_delay=2.0, bounce_target=("127.0.0.1", inbound_port)
    ) as sim:
        settings = Settings(
            database_url=f"sqlite:///{database}",
            smtp={
                "routes": {d: ("127.0.0.1", sim.port) for d in DOMAINS},
                "dns_server": ("127.0.0.1", sim.dns_port),
            },
            min_backoff=2.0,
            max_backoff=10.0,
            max_lifetime=15.0,
            poll_interval=0.2,
            inbound_port=inbound_port,
            default_bounce_domain="bounces.demo.test",
        )
        parts = runtime.open_parts(settings)
        with parts.engine.begin() as conn:
            account, key = accounts.create(conn, "demo", settings.default_bounce_domain)
            suppression.suppress(
                conn,
                account.id,
                "left.the.company@corp.test",
                reason="userunknown",
                source="demo",
                detail="550 5.1.1 bounced last month",
            )
        stop = asyncio.Event()
        server = asyncio.create_task(service.serve(parts, "127.0.0.1", port, stop))
        base = f"http://127.0.0.1:{port}"
        console.print(
            f"[bold]Postwarden[/bold] is serving {base} (API docs: {base}/docs); "
            f"the recipient simulator listens on 127.0.0.1:{sim.port}"
        )
        rng = random.Random(7)
        listed = [*recipients(count, rng), {"email": "left.the.company@corp.test"}]
        late = sum(1 for r in listed if r["email"].startswith("latebounce"))
        async with httpx.AsyncClient(
            base_url=base, timeout=30, headers={"Authorization": f"Bearer {key}"}
        ) as client:
            for _ in range(100):
                try:
                    await client.get("/health")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            response = await client.post(
                "/v1/broadcasts",
                json={
                    "from": "Acme Notifications <notify@acme.test>",
                    "subject": "Your invoice for November is ready",
                    "text": "Hello,\n\nyour invoice is ready in your account.\n\nAcme",
                    "html": "<p>Hello,</p><p>your invoice is ready in "
                    '<a href="https://acme.test/billing">your account</a>.</p>',
                    "category": "billing",
                    "recipients": listed,
                },
            )
            response.raise_for_status()
            accepted = response.json()
            console.print(
                f"Broadcast {accepted['id']} accepted: {len(listed)} recipients, "
                f"intake decided {accepted['counts']}"
            )
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            ) as progress:
                await _wait_until_settled(
                    client, parts, accepted["id"], len(listed), late, progress, timeout
                )
            detail = (await client.get(f"/v1/broadcasts/{accepted['id']}")).json()
            with db.reader(parts.engine).connect() as conn:
                reasons = queries.broadcast_reasons(conn, account.id, accepted["id"])
                later = events.count(conn, source="dsn", kind=status.Kind.BOUNCED)
                suppressed = queries.suppression_count(conn, account.id)
            _summary(console, detail, reasons, later, suppressed)
            example = (
                await client.get("/v1/messages", params={"undelivered": "true", "limit": 1})
            ).json()["items"]
        env = f"POSTWARDEN_DATABASE_URL=sqlite:///{database}"
        console.print("\n[bold]Look further[/bold]")
        console.print(f"  {env} .venv/bin/postwarden log --undelivered")
        if example:
            console.print(f"  {env} .venv/bin/postwarden show {example[0]['id']}")
        console.print(f"  {env} .venv/bin/postwarden suppressions list")
        console.print(
            f"  curl -H 'Authorization: Bearer {key}' "
            f"'{base}/v1/messages?undelivered=true'  (while it runs)"
        )
        console.print(
            f"  {env} .venv/bin/postwarden user create you@example.test --account demo"
            f"   then, with --keep-running, sign in at {base}/"
        )
        if keep_running:
            console.print(f"\nStill serving on {base}; Ctrl-C to stop. API key: {key}")
            await server
        else:
            stop.set()
            await server
