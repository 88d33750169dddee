"""The webhook sender: claim due outbox rows, sign them, post them, record every attempt.

Like the dispatcher it runs in the service: claims are leases (a sender killed mid-attempt
leaves its rows to be claimed again once the lease ends, with the same ``webhook-id``: at
least once), PostgreSQL's claims skip locked rows so several senders share the outbox. Each
endpoint has its own client, its own concurrency and every attempt a timeout, and a claim takes
at most that many rows of any one endpoint and none of an endpoint whose requests are all
under way: a slow or dead endpoint holds up only its own webhooks. A failed attempt is tried
again after an exponential backoff with jitter, for three days (``POSTWARDEN_WEBHOOKS_*``);
then it is a dead letter. Attempts are recorded in batches, in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta

import httpx
from sqlalchemy import Engine

from postwarden import __version__
from postwarden.domain import clock
from postwarden.outbound.webhooks import net, signing
from postwarden.settings import Settings
from postwarden.store import db, webhooks

log = logging.getLogger(__name__)

RESPONSE_KEPT = 1024
"""Bytes of each answer kept with its attempt."""

FLUSH_GATHER = 0.02
"""Seconds results gather before they are written together."""


def backoff(attempt: int, *, minimum: float, maximum: float, jitter: float) -> timedelta:
    """After failed attempt ``attempt`` (1, 2, ...): minimum x 2^(n-1), capped, times a
    random factor in [1 - jitter/2, 1 + jitter/2), so that the retries of many webhooks that
    failed together do not all come back at once."""
    base = min(minimum * 2 ** max(attempt - 1, 0), maximum)
    return timedelta(seconds=base * (1 + jitter * (random.random() - 0.5)))


class Sender:
    def __init__(self, engine: Engine, settings: Settings, *, owner: str | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.conf = settings.webhooks
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:webhooks"
        self.policy = webhooks.DisablePolicy(
            timedelta(seconds=self.conf.disable_after), self.conf.disable_failures
        )
        self.lease = timedelta(seconds=self.conf.timeout * 3 + 10)
        self.wake = asyncio.Event()
        self._clients: dict[int, httpx.AsyncClient] = {}
        self._inflight: dict[int, int] = defaultdict(int)
        self._tasks: set[asyncio.Task[None]] = set()
        self._results: list[webhooks.Result] = []
        self._have_results = asyncio.Event()
        self._freed = asyncio.Event()

    # -- the loops ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop``: claim while there is room, post, record; on stop, wait for the
        requests under way and record them."""
        writer = asyncio.create_task(self._write_results(stop), name="webhooks-writer")
        try:
            while not stop.is_set():
                try:
                    claimed = await self._claim()
                except Exception:
                    log.exception("claiming webhooks failed; retrying")
                    claimed = []
                for c in claimed:
                    self._start(c)
                if claimed and len(claimed) >= self.conf.batch_size:
                    continue
                await self._pause(stop)
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self._have_results.set()
            await writer
            await self.aclose()

    async def run_once(self) -> int:
        """Claim one batch, post it all and record it; returns how many were claimed."""
        claimed = await self._claim()
        for c in claimed:
            self._start(c)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._flush()
        return len(claimed)

    async def _pause(self, stop: asyncio.Event) -> None:
        """Until a request ends (room to claim for its endpoint), a wake, stop or the poll."""
        self._freed.clear()
        waiters = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self.wake.wait()),
            asyncio.ensure_future(self._freed.wait()),
        ]
        await asyncio.wait(
            waiters, timeout=self.conf.poll_interval, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in waiters:
            waiter.cancel()
        self.wake.clear()

    async def _write_results(self, stop: asyncio.Event) -> None:
        while True:
            await self._have_results.wait()
            if not stop.is_set():
                await asyncio.sleep(FLUSH_GATHER)
            self._have_results.clear()
            try:
                await self._flush()
            except Exception:
                log.exception("recording webhook attempts failed; retrying")
                await asyncio.sleep(self.conf.poll_interval)
                self._have_results.set()
                continue
            if stop.is_set() and not self._tasks and not self._results:
                return

    async def _flush(self) -> None:
        results, self._results = self._results, []
        if not results:
            return
        try:
            disabled = await asyncio.to_thread(self._finish, results)
        except BaseException:
            self._results[:0] = results  # kept for the next try
            raise
        for endpoint_id in disabled:
            log.warning("webhook endpoint %d disabled: it keeps failing", endpoint_id)

    # -- database side (threads) -------------------------------------------------------------

    async def _claim(self) -> list[webhooks.Claimed]:
        busy = [e for e, n in self._inflight.items() if n >= self.conf.concurrency]
        room = self.conf.batch_size - len(self._tasks)
        if room <= 0:
            return []
        return await asyncio.to_thread(self._claim_rows, busy, room)

    def _claim_rows(self, busy: list[int], limit: int) -> list[webhooks.Claimed]:
        with db.reader(self.engine).connect() as conn:
            if not webhooks.anything_due(conn, clock.now()):
                return []
        with self.engine.begin() as conn:
            return webhooks.claim(
                conn,
                owner=self.owner,
                limit=limit,
                per_endpoint=self.conf.concurrency,
                lease=self.lease,
                now=clock.now(),
                busy=busy,
            )

    def _finish(self, results: Sequence[webhooks.Result]) -> list[int]:
        with self.engine.begin() as conn:
            return webhooks.finish(conn, results, policy=self.policy, now=clock.now())

    # -- the requests --------------------------------------------------------------------------

    def _start(self, claimed: webhooks.Claimed) -> None:
        self._inflight[claimed.endpoint_id] += 1
        task = asyncio.create_task(self._deliver(claimed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _client(self, endpoint_id: int) -> httpx.AsyncClient:
        found = self._clients.get(endpoint_id)
        if found is None:
            found = self._clients[endpoint_id] = net.client(
                self.settings.http, timeout=self.conf.timeout, connections=self.conf.concurrency
            )
        return found

    async def _deliver(self, c: webhooks.Claimed) -> None:
        try:
            result = await self._attempt(c)
        except Exception as exc:  # never lose the attempt: it is a failure like another
            log.exception("webhook %s: attempt crashed", c.webhook_id)
            result = self._result(c, clock.now(), 0, None, "", f"{type(exc).__name__}: {exc}")
        finally:
            self._inflight[c.endpoint_id] -= 1
            self._freed.set()
        self._results.append(result)
        self._have_results.set()

    async def _attempt(self, c: webhooks.Claimed) -> webhooks.Result:
        started = clock.now()
        t0 = time.perf_counter()
        body = c.payload.encode()
        headers = signing.headers(c.webhook_id, started, body, c.secrets)
        headers["user-agent"] = f"Postwarden-Webhooks/{__version__}"
        status: int | None = None
        text = ""
        error: str | None = None
        try:
            async with asyncio.timeout(self.conf.timeout):
                answer = await net.send(
                    self._client(c.endpoint_id),
                    self.settings.http,
                    "POST",
                    c.url,
                    content=body,
                    headers=headers,
                    limit=RESPONSE_KEPT,
                )
            status = answer.status
            text = answer.body.decode("utf-8", "replace").replace("\x00", "")
            if not 200 <= status < 300:
                error = "the endpoint did not answer 2xx"
        except TimeoutError:
            error = f"no answer within {self.conf.timeout:g} s"
        except net.Refused as exc:
            error = exc.message
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        duration = int((time.perf_counter() - t0) * 1000)
        return self._result(c, started, duration, status, text, error)

    def _result(
        self,
        c: webhooks.Claimed,
        started: datetime,
        duration_ms: int,
        status: int | None,
        text: str,
        error: str | None,
    ) -> webhooks.Result:
        ok = error is None
        next_at = None
        if not ok:
            now = clock.now()
            retry = now + backoff(
                c.attempts,
                minimum=self.conf.min_backoff,
                maximum=self.conf.max_backoff,
                jitter=1.0,
            )
            if retry <= c.retry_since + timedelta(seconds=self.conf.retry_for):
                next_at = retry
        return webhooks.Result(
            c.id, c.endpoint_id, c.attempts, started, duration_ms, status, text, error, ok, next_at
        )

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for http in clients.values():
            with contextlib.suppress(Exception):
                await http.aclose()
