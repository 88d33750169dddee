"""Wiring: build the parts from Settings and run them in one event loop.

``serve`` runs the API, the dispatcher, the webhook sender and the inbound SMTP server together
(the SQLite default); ``worker`` runs only a dispatcher and a webhook sender, for scale-out on
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import uvicorn

from postwarden.inbound.mail import worker as inbound_worker
from postwarden.inbound.mail.server import InboundServer
from postwarden.outbound import registry
from postwarden.outbound.dispatcher import Dispatcher
from postwarden.outbound.webhooks.sender import Sender
from postwarden.runtime import Parts, open_parts
from postwarden.settings import Settings
from postwarden.web.app import create_app

log = logging.getLogger(__name__)

T = TypeVar("T")


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("postwarden").setLevel(logging.INFO)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd: every SMTP command


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


class ProcessExited(RuntimeError):
    """One of ``serve``'s API processes ended on its own: the service stops (and exits non-zero)
    rather than go on answering with fewer processes than it was asked for."""


@contextlib.asynccontextmanager
async def running_dispatcher(parts: Parts, stop: asyncio.Event) -> AsyncIterator[Dispatcher]:
    """The dispatcher over every configured channel, running until ``stop``."""
    channels = registry.channels(parts.settings, parts.secret)
    dispatcher = Dispatcher(parts.engine, parts.settings, channels)
    task = asyncio.create_task(dispatcher.run(stop), name="dispatcher")
    try:
        yield dispatcher
    finally:
        stop.set()
        await task
        await dispatcher.aclose()


@contextlib.asynccontextmanager
async def running_sender(parts: Parts, stop: asyncio.Event) -> AsyncIterator[Sender]:
    """The webhook sender, running until ``stop``."""
    sender = Sender(parts.engine, parts.settings)
    task = asyncio.create_task(sender.run(stop), name="webhooks")
    try:
        yield sender
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def running_inbound(parts: Parts, stop: asyncio.Event) -> AsyncIterator[InboundServer]:
    """The inbound SMTP server and the loop applying what it stores."""
    server = InboundServer(
        parts, host=parts.settings.inbound_host, port=parts.settings.inbound_port
    )
    await server.start()
    task = asyncio.create_task(inbound_worker.run(parts, stop, server.wake), name="inbound-apply")
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


def _dispatcher_wake(dispatcher: Dispatcher) -> Callable[[], None]:
    """What the API calls after accepting a message: set the dispatcher's event, at once on its
    loop, else through the loop (an asyncio.Event is not thread-safe)."""
    loop = asyncio.get_running_loop()
    event = dispatcher.wake

    def wake() -> None:
        if event.is_set():  # setting it again costs nothing
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        else:
            loop.call_soon_threadsafe(event.set)

    return wake


def api_server(parts: Parts, wake: Callable[[], None], host: str, port: int) -> uvicorn.Server:
    app = create_app(parts.settings, parts.engine, parts.secret, wake=wake)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        http=_http_impl(),
        proxy_headers=False,  # the app applies them, from POSTWARDEN_TRUSTED_PROXIES only
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    return server


async def _serve_api(
    server: uvicorn.Server, stop: asyncio.Event, sockets: list[socket.socket] | None = None
) -> None:
    """Answer until ``stop`` is set, then let the requests under way finish."""

    async def _stop_server() -> None:
        await stop.wait()
        server.should_exit = True

    await _until(stop, server.serve(sockets=sockets), _stop_server())


async def serve(
    parts: Parts,
    host: str,
    port: int,
    stop: asyncio.Event | None = None,
    *,
    api_processes: int = 0,
) -> None:
    """API + dispatcher (+ inbound SMTP) in one process; with ``api_processes``, that many
    processes of their own answer the API instead (one interpreter runs Python on one core at
    a time), waking this process's dispatcher when they accept a message."""
    stop = stop or asyncio.Event()
    _install_signals(stop)
    async with (
        running_dispatcher(parts, stop) as dispatcher,
        running_sender(parts, stop),
        running_inbound(parts, stop),
    ):
        if api_processes:
            _listen(host, port).close()  # the port is free: fail here, not in each process
            with _start_api_processes(
                parts.settings, (host, port), api_processes, dispatcher.wake.set
            ) as processes:
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
                    dead = [p for p in processes if not p.is_alive()]
                    if dead and not stop.is_set():
                        stop.set()
                        raise ProcessExited(
                            f"{dead[0].name} exited with code {dead[0].exitcode}; stopped"
                        )
            return
        await _serve_api(api_server(parts, _dispatcher_wake(dispatcher), host, port), stop)


def _listen(host: str, port: int) -> socket.socket:
    """One API process's listening socket on the shared port: with ``SO_REUSEPORT`` the kernel
    spreads new connections over the processes (on one shared socket, whichever process
    accepts first takes every connection waiting)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


@contextlib.contextmanager
def _start_api_processes(
    settings: Settings, address: tuple[str, int], count: int, wake: Callable[[], None]
) -> Iterator[list[multiprocessing.process.BaseProcess]]:
    """``count`` API-only processes listening on ``address`` while the block runs. A datagram
    socket pair carries their wake-ups to ``wake`` (this process's dispatcher)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    loop = asyncio.get_running_loop()

    def _woken() -> None:
        with contextlib.suppress(BlockingIOError):
            while ours.recv(64):
                pass
        wake()

    loop.add_reader(ours.fileno(), _woken)
    context = multiprocessing.get_context("spawn")  # no copy of this process's threads/loop
    processes = [
        context.Process(
            target=_api_process, args=(settings, address, theirs), name=f"postwarden-api-{i}"
        )
        for i in range(count)
    ]
    try:
        for process in processes:
            process.start()
        theirs.close()
        yield processes
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(15)
            if process.exitcode is None:
                process.kill()
                process.join()
        loop.remove_reader(ours.fileno())
        ours.close()
        theirs.close()


def _api_process(settings: Settings, address: tuple[str, int], wake: socket.socket) -> None:
    """An API-only process (see :func:`serve`): it answers requests; the parent delivers."""
    configure_logging()
    parts = open_parts(settings, migrate=False)
    wake.setblocking(False)

    def _wake() -> None:
        with contextlib.suppress(BlockingIOError):  # a wake-up is already on its way
            wake.send(b"!")

    async def main() -> None:
        stop = asyncio.Event()
        _install_signals(stop)
        await _serve_api(api_server(parts, _wake, *address), stop, [_listen(*address)])

    run(main())


async def work(parts: Parts, stop: asyncio.Event | None = None) -> None:
    """Only the dispatcher and the webhook sender."""
    stop = stop or asyncio.Event()
    _install_signals(stop)
    async with running_dispatcher(parts, stop), running_sender(parts, stop):
        await stop.wait()


async def inbound(parts: Parts, stop: asyncio.Event | None = None) -> None:
    """Only the inbound SMTP server and the applying of what it receives."""
    stop = stop or asyncio.Event()
    _install_signals(stop)
    async with running_inbound(parts, stop):
        await stop.wait()
