"""Shared plumbing for the figures: tools, the smtp-sink, child processes, seeding, printing."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".bench-cache"
VENV_BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get(
    "POSTWARDEN_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SINK_DOMAIN = "sink.bench"
SECRET = "bench-secret"
TEXT_2K = (
    "Hello,\n\nyour weekly report is ready. "
    + "\n".join(f"Line {i}: everything went fine, nothing to worry about." for i in range(33))
    + "\n\n-- \nThe Bench team\n"
)
"""About 1.9 KB of text: with the headers, each message is about 2 KB on the wire."""


@dataclass
class Figure:
    """One printed line: the Postwarden number, a reference measured in the same run, ratio."""

    name: str
    value: float
    unit: str
    ref_name: str = ""
    ref_value: float | None = None
    target: str = ""
    note: str = ""
    lower_is_better: bool = False

    def line(self) -> str:
        text = f"FIGURE {self.name}: {_num(self.value)} {self.unit}"
        if self.ref_name and self.ref_value:
            ratio = (
                self.ref_value / self.value if self.lower_is_better else self.value / self.ref_value
            )
            text += f" | {self.ref_name}: {_num(self.ref_value)} {self.unit} | ratio {ratio:.2f}x"
        elif self.ref_name:
            text += f" | {self.ref_name}: n/a"
        if self.target:
            text += f" | target {self.target}"
        if self.note:
            text += f" | {self.note}"
        return text


def _num(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}"


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        print(figure.line(), flush=True)

    def note(self, text: str) -> None:
        print(f"  {text}", flush=True)


# -- tools ---------------------------------------------------------------------------------


def _apt_install(*packages: str) -> None:
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    print(f"  installing {' '.join(packages)} with apt-get", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *packages], env=env, check=True, capture_output=True
    )


def ensure_tools() -> None:
    """smtp-sink and smtp-source (Debian's postfix; the daemon is never started) and wrk."""
    missing = [p for p, tool in (("postfix", "smtp-sink"), ("wrk", "wrk")) if not which(tool)]
    if missing:
        # policy-rc.d keeps apt from starting the Postfix daemon.
        policy = Path("/usr/sbin/policy-rc.d")
        made = False
        if not policy.exists():
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            made = True
        try:
            _apt_install(*missing)
        finally:
            if made:
                policy.unlink()


def which(tool: str) -> str | None:
    return shutil.which(tool) or next(
        (str(p) for p in (Path("/usr/sbin") / tool, Path("/usr/bin") / tool) if p.exists()), None
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def wait_listeners(port: int, count: int, timeout: float = 30.0) -> None:
    """Wait until ``count`` sockets listen on ``port`` (``serve --api-processes``: one each)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as f:
                for line in f.readlines()[1:]:
                    local, state = line.split()[1], line.split()[3]
                    found += state == "0A" and int(local.rsplit(":", 1)[1], 16) == port
        if found >= count:
            return
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {count} sockets listen on port {port}")


class Sink:
    """Postfix's smtp-sink on loopback, counting what it received (``-c``)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.out = tempfile.NamedTemporaryFile(prefix="sink-", suffix=".out", delete=False)
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            [which("smtp-sink") or "smtp-sink", "-c", *user, f"127.0.0.1:{self.port}", "256"],
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port)

    def count(self) -> int:
        self.out.flush()
        with open(self.out.name, "rb") as f:
            f.seek(max(0, os.path.getsize(self.out.name) - 200))
            tail = f.read().decode(errors="replace")
        found = re.findall(r"mesg=(\d+)", tail)
        return int(found[-1]) if found else 0

    def wait_count(self, n: int, timeout: float = 5.0) -> int:
        deadline = time.monotonic() + timeout
        while self.count() < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        return self.count()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self.out.close()
        os.unlink(self.out.name)

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def smtp_source_rate(n: int, size: int, sessions: int = 4) -> float:
    """The limit: smtp-source sending ``n`` messages of ``size`` bytes, connections reused."""
    with Sink() as sink:
        t0 = time.perf_counter()
        subprocess.run(
            [
                which("smtp-source") or "smtp-source",
                "-d",
                "-s",
                str(sessions),
                "-m",
                str(n),
                "-l",
                str(size),
                "-N",
                "-t",
                f"bench@{SINK_DOMAIN}",
                f"127.0.0.1:{sink.port}",
            ],
            check=True,
            capture_output=True,
        )
        elapsed = time.perf_counter() - t0
        got = sink.wait_count(n)
    if got != n:
        print(f"  warning: smtp-sink counted {got} of {n} from smtp-source", flush=True)
    return n / elapsed


# -- processes -----------------------------------------------------------------------------


def postwarden_env(database_url: str, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWARDEN_")}
    env |= {
        "POSTWARDEN_DATABASE_URL": database_url,
        "POSTWARDEN_SECRET_KEY": SECRET,
        "POSTWARDEN_HELO_NAME": "bench.postwarden.test",
        "POSTWARDEN_POLL_INTERVAL": "0.05",
        "POSTWARDEN_INBOUND_PORT": str(free_port()),
    }
    return env | more


def start(args: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen[Any]:
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen(
        [str(VENV_BIN / "postwarden"), *args], env=env, stdout=out, stderr=subprocess.STDOUT
    )


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- databases -----------------------------------------------------------------------------


@contextlib.contextmanager
def sqlite_db(workdir: Path, name: str) -> Iterator[str]:
    path = workdir / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    yield f"sqlite:///{path}"


@contextlib.contextmanager
def pg_db(name: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def pg_available() -> str | None:
    from sqlalchemy import create_engine, text

    try:
        with create_engine(PG_ADMIN_URL).connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:
        return str(exc).splitlines()[0]
    return None


def prepare(database_url: str) -> tuple[Any, Any, str]:
    """Migrate a fresh database and create the bench account; returns (engine, account, key)."""
    from postwarden.store import accounts, db

    engine = db.connect(database_url)
    db.migrate(engine)
    with engine.begin() as conn:
        account, key = accounts.create(conn, "bench", "bounces.bench.test")
    return engine, account, key


def seed_pending(engine: Any, account: Any, n: int, *, due: bool = False) -> int:
    """``n`` pending messages of about 2 KB to the sink's domain, stored as one broadcast.

    Not due (``next_attempt_at`` NULL) unless ``due``: :func:`release` makes them due at once,
    so the clock starts when the dispatcher can see them."""
    from sqlalchemy import update

    from postwarden.intake import accept, schemas
    from postwarden.store import tables as t

    body = schemas.BroadcastIn.model_validate(
        {
            "from": "Bench <bench@bench.test>",
            "subject": "Your weekly report",
            "text": TEXT_2K,
            "category": "report",
            "recipients": [{"email": f"user{i}@{SINK_DOMAIN}"} for i in range(n)],
        }
    )
    with engine.begin() as conn:
        accepted = accept.submit_broadcast(conn, account, body, accept.Limits(10**8, 10**7))
        if not due:
            conn.execute(
                update(t.messages)
                .where(t.messages.c.broadcast_id == accepted.id)
                .values(next_attempt_at=None)
            )
    return accepted.id


def release(engine: Any) -> float:
    """Make every pending message due now; returns the monotonic time it happened."""
    from sqlalchemy import update

    from postwarden.domain import clock
    from postwarden.store import tables as t

    with engine.begin() as conn:
        conn.execute(
            update(t.messages)
            .where(t.messages.c.status == "pending")
            .values(next_attempt_at=clock.now())
        )
    return time.perf_counter()


def count_final(engine: Any) -> int:
    from sqlalchemy import func, select

    from postwarden.domain import status
    from postwarden.store import tables as t

    with engine.connect() as conn:
        return int(
            conn.scalar(
                select(func.count()).where(t.messages.c.status.not_in(status.IN_FLIGHT_VALUES))
            )
            or 0
        )


def wait_final(engine: Any, n: int, timeout: float, procs: list[Any] = ()) -> float:  # type: ignore[assignment]
    """Wait until ``n`` messages have a final status; returns the monotonic time of it."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if count_final(engine) >= n:
            return time.perf_counter()
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"postwarden exited with {p.returncode}")
        time.sleep(0.02)
    raise TimeoutError(f"{count_final(engine)} of {n} messages final after {timeout:.0f} s")
