"""Tracking endpoints under load: requests per second for the open pixel, served by one
``postwarden serve`` (SQLite) and loaded by ``wrk`` from a second process on loopback.

Three runs of the same length:

- ``distinct``: every request is a different message's pixel (valid tokens), so each one
  verifies the token and records an open event (a transaction) the first time;
- ``reload``: one message's pixel again and again (a reload storm): counted once a minute,
  answered without the database;
- ``forged``: tokens that do not verify: answered with the same GIF, no database.

Usage: ``.venv/bin/python -m bench.tracking [--messages 60000] [--seconds 10]
[--connections 32] [--threads 2]``
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from pathlib import Path

from bench import common


def _seed(url: str, n: int) -> tuple[list[int], float]:
    """``n`` delivered messages of one HTML broadcast; returns their ids and seconds taken."""
    from sqlalchemy import select, update

    from postwarden.intake import accept, schemas
    from postwarden.store import tables as t

    engine, account, _ = common.prepare(url)
    t0 = time.perf_counter()
    body = schemas.BroadcastIn.model_validate(
        {
            "from": "bench@bench.test",
            "subject": "Pixel bench",
            "html": '<p>Hi</p><a href="https://example.com/x">x</a>',
            "category": "news",
            "recipients": [{"email": f"r{i}@{common.SINK_DOMAIN}"} for i in range(n)],
        }
    )
    limits = accept.Limits(10_000_000, max(n, 1))
    with engine.begin() as conn:
        bid = accept.submit_broadcast(conn, account, body, limits).id
        conn.execute(
            update(t.messages)
            .where(t.messages.c.broadcast_id == bid)
            .values(status="delivered", next_attempt_at=None)
        )
        ids = list(conn.scalars(select(t.messages.c.id).where(t.messages.c.broadcast_id == bid)))
    engine.dispose()
    return ids, time.perf_counter() - t0


def _lua(paths: list[str], where: Path) -> Path:
    script = where / "paths.lua"
    body = ",\n".join(f'"{p}"' for p in paths)
    script.write_text(
        "local paths = {\n" + body + "\n}\n"
        "local n = #paths\n"
        "local i = 0\n"
        "function setup(thread) thread:set('offset', math.random(n)) end\n"
        "request = function()\n"
        "  i = i + 1\n"
        "  local k = ((i * 7919 + (offset or 0)) % n) + 1\n"
        "  return wrk.format('GET', paths[k], {['User-Agent'] = "
        "'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0'})\n"
        "end\n"
    )
    return script


def _wrk(
    port: int, script: Path, seconds: int, connections: int, threads: int
) -> tuple[float, str]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not found:
        raise RuntimeError(out)
    if re.search(r"Non-2xx or 3xx responses", out):
        raise RuntimeError(f"errors under load:\n{out}")
    return float(found.group(1)), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    common.ensure_tools()

    from sqlalchemy import func, select

    from postwarden.domain import tokens
    from postwarden.store import db
    from postwarden.store import tables as t

    report = common.Report()
    secret = common.SECRET.encode()
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        workdir = Path(tmp)
        with common.sqlite_db(workdir, "tracking") as url:
            ids, seeded = _seed(url, args.messages)
            report.note(f"seeded {len(ids)} delivered messages in {seeded:.1f}s ({url})")
            port = common.free_port()
            env = common.postwarden_env(url)
            proc = common.start(
                ["serve", "--host", "127.0.0.1", "--port", str(port)], env, workdir / "serve.log"
            )
            try:
                common.wait_port(port)
                runs = {
                    "distinct": [f"/t/o/{tokens.sign(secret, 'o', i)}" for i in ids],
                    "reload": [f"/t/o/{tokens.sign(secret, 'o', ids[0])}"],
                    "forged": [
                        f"/t/o/{tokens.sign(b'not-the-secret', 'o', i)}" for i in ids[:1000]
                    ],
                }
                for name, paths in runs.items():
                    script = _lua(paths, workdir)
                    rate, out = _wrk(port, script, args.seconds, args.connections, args.threads)
                    latency = re.search(r"99%\s+(\S+)", out)
                    report.add(
                        common.Figure(
                            f"tracking pixel req/s ({name}, SQLite, 1 serve process)",
                            rate,
                            "req/s",
                            note=f"p99 {latency.group(1) if latency else '?'}; "
                            f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s",
                        )
                    )
            finally:
                common.stop(proc)
            engine = db.connect(url)
            with engine.connect() as conn:
                opens = conn.scalar(
                    select(func.count()).select_from(t.events).where(t.events.c.kind == "opened")
                )
                opened = conn.scalar(
                    select(func.count())
                    .select_from(t.messages)
                    .where(t.messages.c.status == "opened")
                )
            engine.dispose()
            report.note(f"open events recorded: {opens}; messages now opened: {opened}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
