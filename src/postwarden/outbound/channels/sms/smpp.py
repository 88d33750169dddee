"""SMPP 3.4 to an SMSC: one transceiver bind, windowed submit_sm, receipts on the same session.

The PDUs Postwarden sends are built by aiosmpplib's protocol classes (bind_transceiver,
submit_sm, enquire_link, deliver_sm_resp, unbind). Its ``ESME`` runtime is not used: it owns
the queue and the retry policy (a broker it dequeues from, hooks it calls back, receipts
correlated in memory, every deliver_sm acknowledged before the application has kept it, no
outcome for a submit_sm lost with its connection, its own splitting that reports one message
id for several parts), while this channel must give every message one verdict, acknowledge a
receipt only once it has been handed on, and keep receipts matchable for days. So the session
is here, small:

- **Window**: at most ``window`` submit_sm await their submit_sm_resp; more wait for a slot.
- **Receipts** (deliver_sm with a receipt esm_class) and replies are parsed here (the body
  read without trusting a library's text decoding, so an odd TLV never loses a receipt), handed
  to ``on_event``, and only then answered ``ESME_ROK``; if ``on_event`` fails the answer is
  ``ESME_RX_T_APPN`` and the SMSC delivers the receipt again later. A receipt may arrive before
  its submit_sm_resp: it carries only the SMSC's id, and matching is done where it is stored.
- **enquire_link** after ``enquire_interval`` seconds of silence; no answer within ``timeout``
  closes the connection.
- **Reconnect with backoff**: a lost connection fails the submit_sm in flight (``deferred``:
  the SMSC may or may not have taken them, so at most one window can be sent twice); texts not
  yet written wait for the next bind. A failed bind is not retried before its backoff (0.5 s
  doubling to 30 s); meanwhile texts are deferred at once.
- **Throttling**: ``ESME_RTHROTTLED`` or ``ESME_RMSGQFUL`` pauses every submission (0.05 s
  doubling to 5 s, reset by the next success) and resubmits the part, up to five times.
- **Long texts** go as concatenated parts (domain.sms: a User Data Header, or sar TLVs), in
  order; the verdict names every part's message id, comma-separated.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import struct
import time
from collections.abc import Awaitable, Callable

from aiosmpplib import (
    NPI,
    TON,
    BindTransceiver,
    DeliverSmResp,
    EnquireLink,
    GenericNack,
    OptionalParam,
    PhoneNumber,
    SmppCommandStatus,
    SubmitSm,
    Unbind,
    UnbindResp,
)
from aiosmpplib import EnquireLinkResp as _EnquireLinkResp
from aiosmpplib.state import SAR_MSG_REF_NUM, SAR_SEGMENT_SEQNUM, SAR_TOTAL_SEGMENTS

from postwarden.domain import clock, receipts, sms
from postwarden.outbound.channels import base
from postwarden.outbound.channels.sms import provider

log = logging.getLogger(__name__)

GENERIC_NACK = 0x80000000
BIND_TRANSCEIVER_RESP = 0x80000009
SUBMIT_SM = 0x00000004
DELIVER_SM = 0x00000005
UNBIND = 0x00000006
ENQUIRE_LINK = 0x00000015
THROTTLED = frozenset({0x58, 0x14})  # ESME_RTHROTTLED, ESME_RMSGQFUL
ESME_RX_T_APPN = 0x64
ESME_RX_P_APPN = 0x65
ESME_RINVCMDID = 0x03
MAX_PDU = 70_000

Event = receipts.Receipt | receipts.Reply
OnEvent = Callable[[Event], Awaitable[None]]


class Unavailable(Exception):
    """No bound session to send on (the SMSC is unreachable or refused the bind)."""


def status_name(status: int) -> str:
    try:
        member = SmppCommandStatus(status)
    except ValueError:
        return f"0x{status:08X}"
    return f"{member.name}: {member.description}"


def address(number: str) -> PhoneNumber:
    """An SMPP address: E.164 as international/ISDN without the "+", a short code as is,
    anything else as an alphanumeric sender id."""
    if number.startswith("+") and number[1:].isdigit():
        return PhoneNumber(number[1:], TON.INTERNATIONAL, NPI.ISDN)
    if number.isdigit():
        return PhoneNumber(number, TON.UNKNOWN, NPI.UNKNOWN)
    return PhoneNumber(number, TON.ALPHANUMERIC, NPI.UNKNOWN)


# -- reading deliver_sm ------------------------------------------------------------------------
_TLV_NAMES = {0x001E: "receipted_message_id", 0x0427: "message_state", 0x0423: "network_error_code"}
_MESSAGE_PAYLOAD = 0x0424


def _cstring(body: bytes, pos: int) -> tuple[str, int]:
    end = body.index(b"\x00", pos)
    return body[pos:end].decode("latin-1"), end + 1


def read_deliver(body: bytes) -> Event | None:
    """A deliver_sm body as a receipt or a reply; None for a receipt that names no message.
    ValueError/IndexError when the body is malformed."""
    _service, pos = _cstring(body, 0)
    pos += 2
    source, pos = _cstring(body, pos)
    pos += 2
    dest, pos = _cstring(body, pos)
    esm_class = body[pos]
    pos += 3
    _schedule, pos = _cstring(body, pos)
    _validity, pos = _cstring(body, pos)
    pos += 2
    data_coding = body[pos]
    length = body[pos + 2]
    pos += 3
    short = body[pos : pos + length]
    pos += length
    tlvs: dict[str, str | int] = {}
    while pos + 4 <= len(body):
        tag, size = struct.unpack_from(">HH", body, pos)
        value = body[pos + 4 : pos + 4 + size]
        pos += 4 + size
        name = _TLV_NAMES.get(tag)
        if tag == _MESSAGE_PAYLOAD and not short:
            short = value
        elif name == "receipted_message_id":
            tlvs[name] = value.rstrip(b"\x00").decode("latin-1")
        elif name == "message_state" and size == 1:
            tlvs[name] = value[0]
        elif name == "network_error_code" and size == 3:
            tlvs[name] = struct.unpack(">H", value[1:])[0]
    if esm_class & 0x40:  # a part of a long reply: its header skipped
        short = short[short[0] + 1 :] if short else short
    if (esm_class >> 2) & 0x0F in (1, 2, 4, 8):  # SMSC or SME delivery receipt, notifications
        return receipts.smpp_receipt(short.decode("latin-1"), tlvs)
    text = sms.decode_bytes(short, data_coding)
    sender = f"+{source}" if source.isdigit() else source
    return receipts.Reply("smpp", sender, dest, text, sms.keyword(text), "", clock.now())


# -- the session -------------------------------------------------------------------------------
class SMPPProvider:
    name: provider.Kind = "smpp"

    def __init__(
        self,
        config: provider.Config,
        *,
        window: int = 10,
        on_event: OnEvent | None = None,
        enquire_interval: float = 30.0,
        timeout: float = 10.0,
        method: str = "udh",
        throttle_retries: int = 5,
    ) -> None:
        self.config = config
        self.default_sender = config.sender
        self.window = window
        self.on_event = on_event
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        """Receipts and replies, when no ``on_event`` takes them."""
        self.enquire_interval = enquire_interval
        self.timeout = timeout
        self.method = config.options.get("concatenation", method)
        self.throttle_retries = throttle_retries
        self.binds = 0
        self._slots = asyncio.Semaphore(window)
        self._pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._seq = itertools.count(1)
        self._refs = itertools.count(random.randrange(0xFFFF))
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._bind_lock = asyncio.Lock()
        self._failures = 0
        self._next_bind = 0.0
        self._bind_error = ""
        self._resume_at = 0.0
        self._pause = 0.0
        self._heard = 0.0
        self._closing = False

    # -- sending ---------------------------------------------------------------------------
    async def submit(self, item: base.Outgoing[provider.SMS]) -> base.Verdict:
        started = clock.now()
        lines: list[str] = []
        try:
            parts = sms.smpp_parts(
                item.payload.text,
                ref=next(self._refs),
                method="sar" if self.method == "sar" else "udh",
            )
        except ValueError as exc:
            return provider.refused(
                item, receipts.meaning("content"), code=None, detail=str(exc), evidence=None
            )
        ids: list[str] = []
        for part in parts:
            outcome, status, text = await self._submit_part(item, part, lines)
            if outcome != "ok":
                evidence = provider.evidence(self.name, self.config.remote, started, lines)
                if ids:
                    text += f" (after {len(ids)} of {len(parts)} parts were taken)"
                return self._failure(item, outcome, status, text, evidence)
            ids.append(text)
        many = f", {len(parts)} parts" if len(parts) > 1 else ""
        return base.Verdict(
            item.message_id,
            "sent",
            detail=f"accepted by the SMSC{many}",
            provider_message_id=",".join(ids),
            evidence=provider.evidence(self.name, self.config.remote, started, lines),
        )

    def _failure(
        self,
        item: base.Outgoing[provider.SMS],
        outcome: str,
        status: int,
        text: str,
        evidence: base.Evidence,
    ) -> base.Verdict:
        if outcome == "refused":
            return provider.refused(
                item,
                receipts.explain("smpp", status),
                code=f"0x{status:08X}",
                detail=text,
                evidence=evidence,
            )
        cause = "rate_limited" if outcome == "throttled" else "provider_error"
        return provider.refused(
            item,
            receipts.meaning(cause),
            code=f"0x{status:08X}" if status else None,
            detail=text,
            evidence=evidence,
            retry_after=(self._pause or None) if outcome == "throttled" else None,
        )

    async def _submit_part(
        self, item: base.Outgoing[provider.SMS], part: sms.Part, lines: list[str]
    ) -> tuple[str, int, str]:
        """("ok", 0, message id) or (outcome, command_status, what happened)."""
        pdu_args = self._submit_args(item, part)
        for _attempt in range(self.throttle_retries + 1):
            while (wait := self._resume_at - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            async with self._slots:
                try:
                    writer = await self._bound()
                except Unavailable as exc:
                    lines.append(f"not sent: {exc}")
                    return "unavailable", 0, str(exc)
                seq = self._next_seq()
                future: asyncio.Future[tuple[int, bytes]] = (
                    asyncio.get_running_loop().create_future()
                )
                self._pending[seq] = future
                message = SubmitSm(sequence_num=seq, **pdu_args)  # type: ignore[arg-type]
                message.set_encoded_message(part.short_message)
                writer.write(message.pdu())
                lines.append(
                    f">>> submit_sm seq={seq} to={item.to} part={part.seq}/{part.total} "
                    f"data_coding={part.data_coding} octets={len(part.short_message)}"
                )
                try:
                    status, body = await asyncio.wait_for(future, self.timeout)
                except TimeoutError:
                    self._pending.pop(seq, None)
                    text = f"no submit_sm_resp within {self.timeout:g} s"
                    lines.append(f"<<< {text}")
                    return "lost", 0, text + "; the SMSC may have taken it"
                except ConnectionError as exc:
                    lines.append(f"<<< connection lost: {exc}")
                    return "lost", 0, f"{exc} before the SMSC answered; it may have taken it"
            message_id = body.split(b"\x00", 1)[0].decode("latin-1")
            lines.append(f"<<< submit_sm_resp seq={seq} {status_name(status)} id={message_id}")
            if status == 0:
                self._pause = 0.0
                return "ok", 0, receipts.canonical_id(message_id)
            if status not in THROTTLED:
                return "refused", status, status_name(status)
            self._pause = min(max(0.05, self._pause * 2), 5.0)
            self._resume_at = time.monotonic() + self._pause
        return "throttled", status, f"still throttled after {self.throttle_retries} retries"

    def _submit_args(self, item: base.Outgoing[provider.SMS], part: sms.Part) -> dict[str, object]:
        sar = (
            [
                OptionalParam(SAR_MSG_REF_NUM, part.ref),
                OptionalParam(SAR_TOTAL_SEGMENTS, part.total),
                OptionalParam(SAR_SEGMENT_SEQNUM, part.seq),
            ]
            if part.total > 1 and not part.udh
            else []
        )
        args: dict[str, object] = {
            "short_message": item.payload.text,
            "source": address(item.payload.sender),
            "destination": address(item.to),
            "esm_class": 0x40 if part.udh else 0x00,
            "registered_delivery": 0x01,
            "encoding": "ucs2" if part.data_coding == 0x08 else None,
            "optional_params": sar,
            "auto_message_payload": False,
        }
        return args

    def _next_seq(self) -> int:
        seq = next(self._seq)
        if seq > 0x7FFFFFFF:
            self._seq = itertools.count(2)
            seq = 1
        return seq

    # -- the bind --------------------------------------------------------------------------
    async def _bound(self) -> asyncio.StreamWriter:
        if self._writer is not None and not self._writer.is_closing():
            return self._writer
        async with self._bind_lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            if self._closing:
                raise Unavailable("the SMPP session is closing")
            wait = self._next_bind - time.monotonic()
            if wait > 0:
                raise Unavailable(f"{self._bind_error}; next bind attempt in {wait:.1f} s")
            try:
                self._writer = await asyncio.wait_for(self._connect(), self.timeout)
            except (OSError, TimeoutError, Unavailable, asyncio.IncompleteReadError) as exc:
                self._failures += 1
                self._next_bind = time.monotonic() + min(0.5 * 2 ** (self._failures - 1), 30.0)
                self._bind_error = (
                    f"bind to {self.config.remote} failed: {exc or type(exc).__name__}"
                )
                raise Unavailable(self._bind_error) from exc
            self._failures = 0
            return self._writer

    async def _connect(self) -> asyncio.StreamWriter:
        reader, writer = await asyncio.open_connection(self.config.host, self.config.port)
        bind = BindTransceiver(
            sequence_num=self._next_seq(),
            system_id=self.config.user,
            password=self.config.secret.get_secret_value(),
            system_type=self.config.options.get("system_type", ""),
        )
        writer.write(bind.pdu())
        header = await reader.readexactly(16)
        length, command, status, _seq = struct.unpack(">IIII", header)
        await reader.readexactly(max(0, min(length, MAX_PDU) - 16))
        if command != BIND_TRANSCEIVER_RESP or status != 0:
            writer.close()
            raise Unavailable(f"bind_transceiver refused: {status_name(status)}")
        self.binds += 1
        self._heard = time.monotonic()
        self._spawn(self._read(reader, writer))
        self._spawn(self._keep(writer))
        return writer

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _lost(self, writer: asyncio.StreamWriter, why: str) -> None:
        if self._writer is writer:
            self._writer = None
        writer.close()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionError(why))

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        why = "the SMSC closed the connection"
        try:
            while True:
                header = await reader.readexactly(16)
                length, command, status, seq = struct.unpack(">IIII", header)
                if not 16 <= length <= MAX_PDU:
                    why = f"the SMSC sent a PDU of {length} octets"
                    break
                body = await reader.readexactly(length - 16)
                self._heard = time.monotonic()
                if command & 0x80000000:
                    future = self._pending.pop(seq, None)
                    if future is not None and not future.done():
                        future.set_result((status, body))
                elif command == DELIVER_SM:
                    self._spawn(self._deliver(writer, seq, body))
                elif command == ENQUIRE_LINK:
                    writer.write(_EnquireLinkResp(sequence_num=seq).pdu())
                elif command == UNBIND:
                    writer.write(UnbindResp(sequence_num=seq).pdu())
                    why = "the SMSC unbound"
                    break
                else:
                    writer.write(
                        GenericNack(
                            sequence_num=seq,
                            command_status=SmppCommandStatus(ESME_RINVCMDID),
                        ).pdu()
                    )
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            why = f"the connection to the SMSC was lost ({type(exc).__name__})"
        finally:
            self._lost(writer, why)

    async def _deliver(self, writer: asyncio.StreamWriter, seq: int, body: bytes) -> None:
        try:
            event = read_deliver(body)
        except (ValueError, IndexError, struct.error):
            log.error("unreadable deliver_sm from %s: %s", self.config.remote, body.hex())
            status = ESME_RX_P_APPN
        else:
            status = 0
            if event is None:
                log.warning("deliver_sm receipt without a message id: %s", body.hex())
            else:
                try:
                    if self.on_event is None:
                        self.events.put_nowait(event)
                    else:
                        await self.on_event(event)
                except Exception:
                    log.exception("a receipt could not be handed on; the SMSC will resend it")
                    status = ESME_RX_T_APPN
        if not writer.is_closing():
            writer.write(
                DeliverSmResp(sequence_num=seq, command_status=SmppCommandStatus(status)).pdu()
            )

    async def _keep(self, writer: asyncio.StreamWriter) -> None:
        """enquire_link after a silence; a silent SMSC loses its connection."""
        while not writer.is_closing():
            idle = time.monotonic() - self._heard
            if idle < self.enquire_interval:
                await asyncio.sleep(self.enquire_interval - idle)
                continue
            seq = self._next_seq()
            future = asyncio.get_running_loop().create_future()
            self._pending[seq] = future
            writer.write(EnquireLink(sequence_num=seq).pdu())
            try:
                await asyncio.wait_for(future, self.timeout)
            except TimeoutError:
                self._pending.pop(seq, None)
                self._lost(writer, "no enquire_link_resp from the SMSC")
                return
            except ConnectionError:
                return

    async def aclose(self) -> None:
        self._closing = True
        writer = self._writer
        if writer is not None and not writer.is_closing():
            seq = self._next_seq()
            future = asyncio.get_running_loop().create_future()
            self._pending[seq] = future
            writer.write(Unbind(sequence_num=seq).pdu())
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(future, min(self.timeout, 2.0))
            self._lost(writer, "closed")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
