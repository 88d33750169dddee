"""The ``postwarden`` command as a person runs it: a real process on a fresh SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from postwarden.store import accounts, db
from postwarden.testing.simulator import build_dsn


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWARDEN_")}
    env |= {"POSTWARDEN_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", "from postwarden.cli import app; app()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def test_account_send_log_show_and_suppressions(tmp_path: Path) -> None:
    created = run(tmp_path, "account", "create", "acme", "--bounce-domain", "b.acme.test")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("pw_") and " " not in key, "the key is alone on the last line"
    engine = db.connect(f"sqlite:///{tmp_path / 'cli.db'}")
    with engine.connect() as conn:
        assert accounts.authenticate(conn, key) is not None
    engine.dispose()

    sent = run(
        tmp_path,
        "send",
        "--from",
        "app@acme.test",
        "--to",
        "Bob@Example.test",
        "--subject",
        "Hi",
        "--text",
        "hello",
    )
    assert sent.returncode == 0 and sent.stdout.strip() == "message 1: pending"
    refused = run(
        tmp_path,
        "send",
        "--from",
        "app@acme.test",
        "--to",
        "bob@@example.test",
        "--subject",
        "Hi",
        "--text",
        "hello",
    )
    assert refused.returncode == 1 and "not a valid email address" in refused.stderr

    logged = run(tmp_path, "log", "--json")
    (item,) = [json.loads(line) for line in logged.stdout.splitlines()]
    assert (item["id"], item["to"], item["status"]) == (1, "bob@example.test", "pending")
    assert "pending" in run(tmp_path, "log").stdout
    shown = run(tmp_path, "show", "1")
    assert shown.returncode == 0 and "Accepted and waiting" in shown.stdout
    assert run(tmp_path, "show", "99").returncode == 1

    assert run(tmp_path, "suppressions", "add", "gone@example.test").returncode == 0
    assert "gone@example.test" in run(tmp_path, "suppressions", "list").stdout
    dropped = run(
        tmp_path,
        "send",
        "--from",
        "app@acme.test",
        "--to",
        "gone@example.test",
        "--subject",
        "Hi",
        "--text",
        "hello",
    )
    assert dropped.stdout.strip() == "message 2: dropped"
    removed = run(tmp_path, "suppressions", "remove", "gone@example.test")
    assert removed.returncode == 0 and "1 message(s) were dropped" in removed.stdout
    assert "gone@example.test" not in run(tmp_path, "suppressions", "list").stdout


def test_parse_bounce_prints_a_line_per_recipient(tmp_path: Path) -> None:
    original = b"From: app@acme.test\r\nTo: nobody@example.test\r\nSubject: Hi\r\n\r\nhello\r\n"
    bounce = tmp_path / "bounce.eml"
    bounce.write_bytes(
        build_dsn(
            reporting_mta="mx.example.test",
            original=original,
            recipient="nobody@example.test",
            status="5.1.1",
            diagnostic="550 5.1.1 <nobody@example.test>: User unknown",
        )
    )
    letter = tmp_path / "letter.eml"
    letter.write_bytes(b"From: a@example.test\r\nSubject: lunch?\r\n\r\nare you free?\r\n")
    done = run(tmp_path, "parse-bounce", str(bounce), str(letter))
    assert done.returncode == 0, done.stderr
    first, second = (json.loads(line) for line in done.stdout.splitlines())
    assert first == {
        "file": str(bounce),
        "recipient": "nobody@example.test",
        "status": "5.1.1",
        "reason": "userunknown",
        "hard": True,
        "kind": "bounce",
    }
    assert second["kind"] == "unknown" and second["recipient"] is None
    missing = run(tmp_path, "parse-bounce", str(bounce), str(tmp_path / "missing.eml"))
    assert missing.returncode == 1
    assert "cannot read" in missing.stderr and len(missing.stdout.splitlines()) == 1
