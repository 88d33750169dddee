"""The peer: django-post-office, in its own virtual environment under .bench-cache/.

The bench writes a minimal Django project there, queues the same messages with
``post_office.mail.send`` (one call per notification, as an application does) and sends them
with post_office's own ``send_queued_mail`` to the same smtp-sink. Never a dependency of
Postwarden: it lives only in ``.bench-cache/peer-venv``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench import common

VENV = common.CACHE / "peer-venv"
PROJECT = common.CACHE / "peer-project"

SETTINGS = """\
SECRET_KEY = "bench"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "post_office"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": %(db)r,
                         "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL;"}}}
EMAIL_BACKEND = "post_office.EmailBackend"
EMAIL_HOST = "127.0.0.1"
EMAIL_PORT = int(__import__("os").environ["BENCH_SINK_PORT"])
POST_OFFICE = {"BACKENDS": {"default": "django.core.mail.backends.smtp.EmailBackend"},
               "BATCH_SIZE": 500, "LOG_LEVEL": 0, "DEFAULT_PRIORITY": "medium"}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [],
              "APP_DIRS": True}]
LOGGING = {"version": 1, "disable_existing_loggers": False}
"""

QUEUE = """\
import json, sys, time
import django
django.setup()
from post_office import mail
n, text = int(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
for i in range(n):
    mail.send(f"user{i}@%(domain)s", "Bench <bench@bench.test>",
              subject="Your weekly report", message=text, priority="medium")
print(json.dumps({"queued_s": time.perf_counter() - t0}))
"""


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        print("  installing django-post-office into .bench-cache/peer-venv", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import post_office, django"], capture_output=True)
    if probe.returncode:
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "django", "django-post-office"],
            check=True,
            capture_output=True,
        )
    return python


def run(n: int, sink: common.Sink) -> tuple[float, float]:
    """Queue and send ``n`` messages; returns (queued per second, sent per second)."""
    python = ensure_venv()
    PROJECT.mkdir(parents=True, exist_ok=True)
    db = PROJECT / "peer.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    (PROJECT / "bench_settings.py").write_text(SETTINGS % {"db": str(db)})
    (PROJECT / "queue_mail.py").write_text(QUEUE % {"domain": common.SINK_DOMAIN})
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "bench_settings",
        "PYTHONPATH": str(PROJECT),
        "BENCH_SINK_PORT": str(sink.port),
    }
    django_admin = [str(python), "-m", "django"]
    subprocess.run([*django_admin, "migrate", "-v", "0"], env=env, cwd=PROJECT, check=True)
    out = subprocess.run(
        [str(python), "queue_mail.py", str(n), common.TEXT_2K],
        env=env,
        cwd=PROJECT,
        check=True,
        capture_output=True,
        text=True,
    )
    queued_s = json.loads(out.stdout.strip().splitlines()[-1])["queued_s"]
    before = sink.count()
    t0 = time.perf_counter()
    subprocess.run(
        [*django_admin, "send_queued_mail", "--processes", "1", "--log-level", "0"],
        env=env,
        cwd=PROJECT,
        check=True,
        capture_output=True,
    )
    sent_s = time.perf_counter() - t0
    got = sink.wait_count(before + n) - before
    if got != n:
        print(f"  warning: smtp-sink counted {got} of {n} from django-post-office", flush=True)
    return n / queued_s, n / sent_s
