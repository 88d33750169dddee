"""Figure 2: intake through the real HTTP API of a ``postwarden serve`` process.

(a) one broadcast of 100,000 recipients (duplicates, suppressed and invalid among them): the
time until the 202 with every row stored and every intake decision taken, and the serving
process's peak RSS (figure 3b); (b) single-message ``POST /v1/messages`` from wrk (a Lua script
sets the body and the API key) in another process on loopback, while the same process
delivers what it accepts to smtp-sink. The reference is the peer's own queueing rate
(django-post-office ``mail.send``, no HTTP), measured in the same run by the delivery figure.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench import common

WRK_LUA = """\
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer %(key)s"
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  local body = '{"from": "Shop <shop@bench.test>", "to": "user' .. counter ..
    '@%(domain)s", "subject": "Your order", "text": "Thanks for your order.", ' ..
    '"category": "orders"}'
  return wrk.format(nil, "/v1/messages", nil, body)
end
"""


def _recipients(n: int) -> tuple[list[dict[str, str]], list[str]]:
    """n recipients: ~3% suppressed, ~5% duplicates, ~2% invalid, the rest distinct."""
    out: list[dict[str, str]] = []
    suppressed: list[str] = []
    for i in range(n):
        if i % 50 == 7:
            out.append({"email": f"not an address {i}"})
        elif i % 20 == 3 and i > 100:
            out.append({"email": f"user{i - 101}@{common.SINK_DOMAIN}"})
        elif i % 33 == 5:
            address = f"gone{i}@{common.SINK_DOMAIN}"
            suppressed.append(address)
            out.append({"email": address})
        else:
            out.append({"email": f"user{i}@{common.SINK_DOMAIN}"})
    return out, suppressed


def _suppress(engine: object, account: object, addresses: list[str]) -> None:
    from sqlalchemy import insert

    from postwarden.domain import clock
    from postwarden.store import tables as t

    rows = [
        {
            "account_id": account.id,  # type: ignore[attr-defined]
            "address": a,
            "category": "",
            "reason": "userunknown",
            "detail": "bench",
            "source": "bench",
            "created_at": clock.now(),
        }
        for a in addresses
    ]
    with engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(insert(t.suppressions), rows)


def broadcast(report: common.Report, n: int, workdir: Path, peer_queued: float | None) -> None:
    recipients, suppressed = _recipients(n)
    with common.sqlite_db(workdir, "intake") as url, common.Sink() as sink:
        engine, account, key = common.prepare(url)
        _suppress(engine, account, suppressed)
        port = common.free_port()
        env = common.postwarden_env(
            url, POSTWARDEN_SMTP_ROUTES=f"{common.SINK_DOMAIN}=127.0.0.1:{sink.port}"
        )
        proc = common.start(["serve", "--port", str(port)], env, workdir / "intake.log")
        try:
            common.wait_port(port)
            body = json.dumps(
                {
                    "from": "Bench <bench@bench.test>",
                    "subject": "Our news",
                    "text": common.TEXT_2K,
                    "category": "news",
                    "recipients": recipients,
                }
            ).encode()
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
                t0 = time.perf_counter()
                response = client.post(
                    "/v1/broadcasts",
                    content=body,
                    headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                )
                elapsed = time.perf_counter() - t0
            rss = common.vm_hwm_mb(proc.pid)
        finally:
            common.stop(proc)
        response.raise_for_status()
        counts = response.json()["counts"]
        from sqlalchemy import func, select

        from postwarden.store import tables as t

        with engine.connect() as conn:
            stored = conn.scalar(select(func.count()).select_from(t.messages))
        engine.dispose()
    ok = stored == n and sum(counts.values()) == n
    detail = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
    report.add(
        common.Figure(
            f"intake broadcast {n:,} recipients",
            elapsed,
            "s",
            target="< 5 s" if n >= 100_000 else "",
            note=f"{n / elapsed:,.0f} recipients/s; {detail}; "
            + ("every row stored" if ok else f"STORED {stored} OF {n}"),
        )
    )
    if peer_queued:
        report.add(
            common.Figure(
                "intake broadcast rate vs peer",
                n / elapsed,
                "msgs/s",
                "django-post-office mail.send",
                peer_queued,
            )
        )
    report.add(common.Figure("memory intake serve VmHWM", rss, "MB", target="< 500"))


def single(report: common.Report, seconds: float, workdir: Path, peer_queued: float | None) -> None:
    """The single-message figure twice: ``serve`` as it starts by default (API, dispatcher and
    inbound in one process) and ``serve --api-processes 2`` (the API in two processes of its
    own, the main process delivering), both delivering to smtp-sink what they accept."""
    for processes in (0, 2):
        rate, errors, tool = _single_run(seconds, workdir, processes)
        how = f"serve --api-processes {processes}" if processes else "serve, API in-process"
        report.add(
            common.Figure(
                f"intake POST /v1/messages ({how})",
                rate,
                "req/s",
                "django-post-office mail.send" if peer_queued else "",
                peer_queued,
                ">= 1,500",
                f"{tool}, {seconds:.0f} s; non-2xx {errors}",
            )
        )


def _single_run(seconds: float, workdir: Path, processes: int) -> tuple[float, int, str]:
    with common.sqlite_db(workdir, f"single{processes}") as url, common.Sink() as sink:
        engine, _account, key = common.prepare(url)
        engine.dispose()
        port = common.free_port()
        env = common.postwarden_env(
            url, POSTWARDEN_SMTP_ROUTES=f"{common.SINK_DOMAIN}=127.0.0.1:{sink.port}"
        )
        args = ["serve", "--port", str(port), "--api-processes", str(processes)]
        proc = common.start(args, env, workdir / f"single{processes}.log")
        try:
            common.wait_listeners(port, max(1, processes))
            with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
                lua.write(WRK_LUA % {"key": key, "domain": common.SINK_DOMAIN})
            wrk = common.which("wrk")
            if wrk:
                out = subprocess.run(
                    [
                        wrk,
                        "-t1",
                        "-c16",
                        f"-d{seconds:.0f}s",
                        "-s",
                        lua.name,
                        f"http://127.0.0.1:{port}",
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
                non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
                errors = int(non2xx.group(1)) if non2xx else 0
                tool = "wrk -t1 -c16"
            else:
                rate, errors = _httpx_load(port, key, seconds)
                tool = "httpx, 2 processes"
            Path(lua.name).unlink()
        finally:
            common.stop(proc)
    return rate, errors, tool


def _httpx_load(port: int, key: str, seconds: float) -> tuple[float, int]:
    """Fallback load generator when wrk is unavailable: two processes of keep-alive clients."""
    code = (
        "import httpx,sys,time\n"
        "port,key,secs,w=int(sys.argv[1]),sys.argv[2],float(sys.argv[3]),sys.argv[4]\n"
        "c=httpx.Client(base_url=f'http://127.0.0.1:{port}',\n"
        "  headers={'Authorization':'Bearer '+key})\n"
        "n=e=0;end=time.perf_counter()+secs\n"
        "while time.perf_counter()<end:\n"
        "  r=c.post('/v1/messages',json={'from':'shop@bench.test','to':f'u{w}-{n}@sink.bench',"
        "'subject':'s','text':'t'});n+=1;e+=r.status_code!=202\n"
        "print(n,e)\n"
    )
    procs = [
        subprocess.Popen(
            [str(common.VENV_BIN / "python"), "-c", code, str(port), key, str(seconds), str(w)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(2)
    ]
    total = errors = 0
    for p in procs:
        n, e = map(int, p.communicate()[0].split())
        total += n
        errors += e
    return total / seconds, errors
