"""Figure 1: delivery. N queued messages of about 2 KB from ``pending`` to their recorded
final status at smtp-sink, on SQLite (one ``postwarden serve``) and on PostgreSQL (two
``postwarden worker`` processes), next to smtp-source (the limit) and django-post-office (the
peer) sending the same messages to the same kind of sink. Also figure 3a: the serving
process's peak RSS during delivery."""

from __future__ import annotations

import time
from pathlib import Path

from bench import common, peer

SIZE = 2048


def _run_postwarden(
    url: str, n: int, workdir: Path, *, workers: int, sqlite: bool
) -> tuple[float, int, float]:
    """Returns (messages per second, messages counted by the sink, peak RSS MB of process 1)."""
    engine, account, _key = common.prepare(url)
    common.seed_pending(engine, account, n)
    with common.Sink() as sink:
        env = common.postwarden_env(
            url, POSTWARDEN_SMTP_ROUTES=f"{common.SINK_DOMAIN}=127.0.0.1:{sink.port}"
        )
        procs = []
        try:
            if sqlite:
                port = common.free_port()
                procs.append(
                    common.start(["serve", "--port", str(port)], env, workdir / "serve.log")
                )
                common.wait_port(port)
            else:
                for i in range(workers):
                    procs.append(common.start(["worker"], env, workdir / f"worker{i}.log"))
                time.sleep(1.5)  # imports and the first empty poll
                for p in procs:
                    if p.poll() is not None:
                        raise RuntimeError("a worker exited at start; see its log")
            t0 = common.release(engine)
            t1 = common.wait_final(engine, n, timeout=max(60.0, n / 50), procs=procs)
            got = sink.wait_count(n, timeout=2)
            rss = common.vm_hwm_mb(procs[0].pid)
        finally:
            for p in procs:
                common.stop(p)
            engine.dispose()
    return n / (t1 - t0), got, rss


def run(
    report: common.Report, n: int, workdir: Path, *, with_pg: bool, rounds: int = 2
) -> tuple[float, float]:
    """Returns (smtp-source rate, the peer's queueing rate) for the other figures.

    The peer and Postwarden on SQLite run ``rounds`` times, alternating, and each figure is
    the mean of its rounds: on a shared machine the speed drifts by a third within a minute,
    and one run of each, a few seconds apart, could fall on either side of a drift."""
    limit = common.smtp_source_rate(n, SIZE)
    peer_n = min(n, 5000)
    queued_runs: list[float] = []
    sent_runs: list[float] = []
    rate_runs: list[float] = []
    got_runs: list[int] = []
    rss = 0.0
    for _ in range(rounds):
        with common.Sink() as sink:
            queued, sent = peer.run(peer_n, sink)
        queued_runs.append(queued)
        sent_runs.append(sent)
        with common.sqlite_db(workdir, "delivery") as url:
            rate, got, peak = _run_postwarden(url, n, workdir, workers=1, sqlite=True)
        rate_runs.append(rate)
        got_runs.append(got)
        rss = max(rss, peak)
    queued, sent, rate = (sum(r) / len(r) for r in (queued_runs, sent_runs, rate_runs))
    report.note(
        f"references: smtp-source {limit:,.0f} msgs/s (4 sessions, -d connection reuse); "
        f"django-post-office queued {queued:,.0f}/s, send_queued_mail {sent:,.0f}/s "
        f"(on {peer_n:,} messages)"
    )
    if rounds > 1:
        report.note(
            f"{rounds} rounds, the peer and Postwarden alternating; the figures are the means "
            f"of send_queued_mail {_each(sent_runs)} and Postwarden on SQLite "
            f"{_each(rate_runs)} msgs/s"
        )
    wrong = [got for got in got_runs if got != n]
    exact = "sink count equals N" if not wrong else f"SINK COUNTED {wrong[0]} OF {n}"
    report.add(
        common.Figure(
            "delivery sqlite serve",
            rate,
            "msgs/s",
            "smtp-source",
            limit,
            ">= 3,000 and >= 15% of smtp-source",
            f"N={n:,}; {exact}",
        )
    )
    report.add(
        common.Figure(
            "delivery sqlite vs peer", rate, "msgs/s", "django-post-office", sent, ">= 4x"
        )
    )
    report.add(common.Figure("memory delivery serve VmHWM", rss, "MB", target="< 300"))

    if not with_pg:
        report.note("PostgreSQL figures skipped")
        return limit, queued
    problem = common.pg_available()
    if problem:
        report.note(f"PostgreSQL figures skipped: {problem}")
        return limit, queued
    with common.pg_db("postwarden_bench_delivery") as url:
        rate, got, _rss = _run_postwarden(url, n, workdir, workers=2, sqlite=False)
    exact = "sink count equals N" if got == n else f"SINK COUNTED {got} OF {n}"
    report.add(
        common.Figure(
            "delivery postgresql 2 workers",
            rate,
            "msgs/s",
            "smtp-source",
            limit,
            ">= 3,000 and >= 15% of smtp-source",
            f"N={n:,}; {exact}",
        )
    )
    report.add(
        common.Figure(
            "delivery postgresql vs peer", rate, "msgs/s", "django-post-office", sent, ">= 4x"
        )
    )
    return limit, queued


def _each(values: list[float]) -> str:
    return " and ".join(f"{v:,.0f}" for v in values)
