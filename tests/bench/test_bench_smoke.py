"""The benchmark suite cannot rot: ``python -m bench --smoke`` runs end to end and prints every
figure line. No timing is asserted here: figures are measured, never asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

EXPECTED = [
    "FIGURE delivery sqlite serve:",
    "FIGURE delivery sqlite vs peer:",
    "FIGURE memory delivery serve VmHWM:",
    "FIGURE intake broadcast 1,000 recipients:",
    "FIGURE memory intake serve VmHWM:",
    "FIGURE intake POST /v1/messages (serve, API in-process):",
    "FIGURE intake POST /v1/messages (serve --api-processes 2):",
    "FIGURE queries first page p95",
    "FIGURE queries undelivered p95",
    "FIGURE queries address p95",
    "FIGURE queries date range",
    "FIGURE queries broadcast (oldest) p95",
    "FIGURE queries undelivered count, 30 days p95",
    "FIGURE sms smpp one process:",
]


@pytest.mark.slow
def test_bench_smoke_prints_every_figure() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWARDEN_")}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for line in EXPECTED:
        assert line in out, f"missing {line!r} in:\n{out}"
    assert "sink count equals N" in out
    if "PostgreSQL figures skipped" not in out:
        assert "FIGURE delivery postgresql 2 workers:" in out
    if "inbound figure skipped" not in out:
        assert "FIGURE inbound bounces over SMTP, applied:" in out
