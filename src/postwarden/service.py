"""Wiring: build the parts from Settings and run them in one event loop.

``serve`` runs the API, the dispatcher and the inbound SMTP server together (the SQLite
default); ``worker`` runs only a dispatcher, for scale-out on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import uvicorn
from sqlalchemy import Engine

from postwarden import accounts, store
from postwarden.channels.smtp import SMTPChannel, SMTPConfig
from postwarden.dispatcher import Dispatcher
from postwarden.inbound import apply as inbound_apply
from postwarden.inbound.server import InboundServer
from postwarden.settings import Settings
from postwarden.web.app import create_app

log = logging.getLogger(__name__)

T = TypeVar("T")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # Windows, or not installed: the standard loop
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop where available (cheaper transports and scheduling)."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(main)


@dataclass
class Parts:
    settings: Settings
    engine: Engine
    secret: bytes


def open_parts(settings: Settings, *, migrate: bool = True) -> Parts:
    """Connect, bring the schema up to date, and find the signing secret."""
    engine = store.connect(settings.database_url)
    if migrate:
        store.migrate(engine)
    if settings.secret_key is not None:
        secret = settings.secret_key.get_secret_value().encode()
    else:
        with engine.begin() as conn:
            secret = accounts.instance_secret(conn)
    return Parts(settings, engine, secret)


def smtp_channel(settings: Settings) -> SMTPChannel:
    return SMTPChannel(
        SMTPConfig(
            relay=settings.smtp_relay,
            routes=settings.route_map,
            helo_name=settings.helo_name,
            dns_nameserver=settings.dns_nameserver,
            connect_timeout=settings.connect_timeout,
            command_timeout=settings.command_timeout,
            data_timeout=settings.data_timeout,
            per_domain_concurrency=settings.per_domain_concurrency,
            messages_per_connection=settings.messages_per_connection,
        )
    )


@contextlib.asynccontextmanager
async def running_dispatcher(parts: Parts, stop: asyncio.Event) -> AsyncIterator[Dispatcher]:
    channel = smtp_channel(parts.settings)
    dispatcher = Dispatcher(parts.engine, parts.settings, channel, parts.secret)
    task = asyncio.create_task(dispatcher.run(stop), name="dispatcher")
    try:
        yield dispatcher
    finally:
        stop.set()
        await task
        await channel.aclose()


@contextlib.asynccontextmanager
async def running_inbound(parts: Parts, stop: asyncio.Event) -> AsyncIterator[InboundServer]:
    """The inbound SMTP server and the loop applying what it stores."""
    server = InboundServer(
        parts, host=parts.settings.inbound_host, port=parts.settings.inbound_port
    )
    await server.start()
    task = asyncio.create_task(inbound_apply.run(parts, stop, server.wake), name="inbound-apply")
    try:
        yield server
    finally:
        stop.set()
        await server.stop()
        await task


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def _until(stop: asyncio.Event, *work: Awaitable[object]) -> None:
    tasks = [asyncio.ensure_future(w) for w in work]
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    waiter.cancel()


def _http_impl() -> str:
    """httptools (a C HTTP parser) where installed, else uvicorn's pure-Python h11."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return "httptools"


def api_server(parts: Parts, dispatcher: Dispatcher | None, host: str, port: int) -> uvicorn.Server:
    wake: Callable[[], None] = lambda: None  # noqa: E731
    if dispatcher is not None:
        loop = asyncio.get_running_loop()
        event = dispatcher.wake

        def wake() -> None:
            """Set the dispatcher's event: at once on the loop, else through the loop (an
            asyncio.Event is not thread-safe). Setting it again while set costs nothing."""
            if event.is_set():
                return
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                event.set()
            else:
                loop.call_soon_threadsafe(event.set)

    app = create_app(parts.settings, parts.engine, parts.secret, wake=wake)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        http=_http_impl(),
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    return server


async def serve(parts: Parts, host: str, port: int, stop: asyncio.Event | None = None) -> None:
    """API + dispatcher (+ inbound SMTP) in one process."""
    stop = stop or asyncio.Event()
    _install_signals(stop)
    async with running_dispatcher(parts, stop) as dispatcher, running_inbound(parts, stop):
        server = api_server(parts, dispatcher, host, port)

        async def _stop_server() -> None:
            await stop.wait()
            server.should_exit = True

        await _until(stop, server.serve(), _stop_server())


async def work(parts: Parts, stop: asyncio.Event | None = None) -> None:
    """Only the dispatcher."""
    stop = stop or asyncio.Event()
    _install_signals(stop)
    async with running_dispatcher(parts, stop):
        await stop.wait()


async def inbound(parts: Parts, stop: asyncio.Event | None = None) -> None:
    """Only the inbound SMTP server and the applying of what it receives."""
    stop = stop or asyncio.Event()
    _install_signals(stop)
    async with running_inbound(parts, stop):
        await stop.wait()
