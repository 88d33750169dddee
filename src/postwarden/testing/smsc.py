"""An SMSC on loopback: an SMPP 3.4 server answering like a carrier's for the test handsets.

It accepts bind_transceiver (checking system_id and password), answers submit_sm with a
message id (hexadecimal, as many SMSCs do) and sends a deliver_sm receipt per part: text
``id:… sub:001 dlvrd:… submit date:… done date:… stat:DELIVRD err:000 text:…`` with the id in
decimal and zero-padded (the other usual habit), plus ``receipted_message_id`` and
``message_state`` TLVs unless ``receipt_tlvs`` is off. Receipts come after ``receipt_delay``
seconds, or before the submit_sm_resp with ``receipt_first``. It answers ESME_RTHROTTLED for
the throttled handset's first two submissions (and for every submission while ``throttle``
is set), ESME_RINVDSTADR for the invalid one, sends a STOP reply (deliver_sm, esm_class 0)
from the STOP handset, and can cut a bind: ``drop_after`` closes the connection when that
many submit_sm have arrived, leaving the last ones unanswered. Every submit_sm is kept
(``submits``), and long texts are reassembled (``texts``) from their UDH or sar parts.

PDUs are read and written with aiosmpplib's protocol classes, so Postwarden's own PDU reading
(outbound.channels.sms.smpp) is checked against a second implementation.

Run alone for the benchmark: ``python -m postwarden.testing.smsc --port 2775``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import struct
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiosmpplib import (
    NPI,
    TON,
    BindTransceiverResp,
    DeliverSm,
    EnquireLinkResp,
    GenericNack,
    OptionalParam,
    PhoneNumber,
    SmppCommandStatus,
    SubmitSm,
    SubmitSmResp,
    UnbindResp,
)
from aiosmpplib.protocol import PduHeader
from aiosmpplib.state import MESSAGE_STATE, RECEIPTED_MESSAGE_ID, SmppCommand

from postwarden.testing import handsets

# fate -> (stat, err, message_state)
_RECEIPT = {
    "delivered": ("DELIVRD", 0, 2),
    "stop": ("DELIVRD", 0, 2),
    "unknown": ("UNDELIV", 1, 5),
    "unreachable": ("UNDELIV", 27, 5),
    "filtered": ("REJECTD", 0, 8),
    "landline": ("UNDELIV", 11, 5),
}


@dataclass
class Submit:
    """One submit_sm as the SMSC read it."""

    message_id: str
    source: str
    destination: str
    text: str  # this part's text, decoded
    data_coding: int
    ref: int | None
    seq: int | None
    total: int | None


@dataclass
class SMSC:
    system_id: str = "postwarden"
    password: str = "secret"
    receipt_delay: float = 0.0
    receipt_first: bool = False
    receipt_tlvs: bool = True
    receipts_enabled: bool = True
    throttle: bool = False
    drop_after: int | None = None
    handsets: handsets.Handsets = field(default_factory=handsets.Handsets)
    submits: list[Submit] = field(default_factory=list)
    per_number: Counter[str] = field(default_factory=Counter)
    acks: list[int] = field(default_factory=list)  # command_status of each deliver_sm_resp
    binds: int = 0
    enquiries: int = 0
    port: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(0x10000))
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _parts: dict[tuple[str, int], dict[int, str]] = field(default_factory=lambda: defaultdict(dict))
    texts: list[tuple[str, str]] = field(default_factory=list)  # (destination, whole text)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def provider_url(self) -> str:
        return f"smpp://{self.system_id}:{self.password}@127.0.0.1:{self.port}?source=Acme"

    async def __aenter__(self) -> SMSC:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.drop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    def drop(self) -> None:
        """Cut every bind now (what a restarting SMSC does)."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def settle(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        bound = False
        try:
            while True:
                header = await reader.readexactly(16)
                length, command, status, seq = struct.unpack(">IIII", header)
                body = await reader.readexactly(length - 16)
                pdu = header + body
                if command == SmppCommand.BIND_TRANSCEIVER:
                    ok = self._bind_ok(body)
                    bound = ok
                    self.binds += ok
                    writer.write(
                        BindTransceiverResp(
                            sequence_num=seq,
                            command_status=SmppCommandStatus(0 if ok else 0x0E),
                            system_id="LOOPSMSC",
                        ).pdu()
                    )
                elif not bound and not command & 0x80000000:
                    writer.write(GenericNack(seq, SmppCommandStatus.ESME_RINVBNDSTS).pdu())
                elif command == SmppCommand.SUBMIT_SM:
                    if self.drop_after is not None and len(self.submits) + 1 >= self.drop_after:
                        self.drop_after = None
                        writer.transport.abort()
                        return
                    self._submit(writer, pdu, length, seq)
                elif command == SmppCommand.ENQUIRE_LINK:
                    self.enquiries += 1
                    writer.write(EnquireLinkResp(sequence_num=seq).pdu())
                elif command == SmppCommand.UNBIND:
                    writer.write(UnbindResp(sequence_num=seq).pdu())
                    await writer.drain()
                    return
                elif command == SmppCommand.DELIVER_SM_RESP:
                    self.acks.append(status)
                elif not command & 0x80000000:
                    writer.write(GenericNack(seq, SmppCommandStatus.ESME_RINVCMDID).pdu())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _bind_ok(self, body: bytes) -> bool:
        system_id, _, rest = body.partition(b"\x00")
        password = rest.partition(b"\x00")[0]
        return system_id.decode() == self.system_id and password.decode() == self.password

    def _submit(self, writer: asyncio.StreamWriter, pdu: bytes, length: int, seq: int) -> None:
        header = PduHeader(length, SmppCommand.SUBMIT_SM, SmppCommandStatus.ESME_ROK, seq)
        message = SubmitSm.from_pdu(pdu, header, "gsm0338")
        assert isinstance(message, SubmitSm)
        number = f"+{message.destination.number}"
        self.per_number[number] += 1
        if self.throttle:
            writer.write(
                SubmitSmResp(sequence_num=seq, command_status=SmppCommandStatus(0x58)).pdu()
            )
            return
        first_part = not message.is_segmented() or message.get_segmentation_data()[1] == 1
        fate = self.handsets.fate(number) if first_part else self._fate_of(number)
        if fate == "throttled" and self.handsets.texts[number] <= 2:
            writer.write(
                SubmitSmResp(sequence_num=seq, command_status=SmppCommandStatus(0x58)).pdu()
            )
            return
        if fate == "invalid":
            writer.write(
                SubmitSmResp(sequence_num=seq, command_status=SmppCommandStatus(0x0B)).pdu()
            )
            return
        number_id = next(self._ids)
        message_id = f"{number_id:X}"
        ref = seq_no = total = None
        if message.is_segmented():
            ref, seq_no, total = message.get_segmentation_data()
        data_coding = 8 if message.encoding == "ucs2" else 0
        self.submits.append(
            Submit(
                message_id,
                message.source.number,
                number,
                message.short_message,
                data_coding,
                ref,
                seq_no,
                total,
            )
        )
        self._assemble(number, message.short_message, ref, seq_no, total)
        resp = SubmitSmResp(sequence_num=seq, message_id=message_id).pdu()
        receipt = (
            self._receipt(message, number_id, message_id, fate) if self.receipts_enabled else None
        )
        if receipt is not None and self.receipt_first and not self.receipt_delay:
            writer.write(receipt)
            writer.write(resp)
        else:
            writer.write(resp)
            if receipt is not None:
                self._spawn(self._later(writer, receipt, self.receipt_delay))
        if fate == "stop" and first_part:
            self._spawn(
                self._later(
                    writer, self._reply(number, message.source.number), self.receipt_delay + 0.02
                )
            )

    def _fate_of(self, number: str) -> handsets.Fate:
        """The fate of a further part of the text already counted."""
        fate = handsets.FATES.get(number, "delivered")
        if fate == "unreachable" and self.handsets.texts[number] > 1:
            return "delivered"
        return fate

    def _assemble(
        self, number: str, text: str, ref: int | None, seq: int | None, total: int | None
    ) -> None:
        if ref is None or seq is None or total is None:
            self.texts.append((number, text))
            return
        parts = self._parts[(number, ref)]
        parts[seq] = text
        if len(parts) == total:
            self.texts.append((number, "".join(parts[i] for i in sorted(parts))))
            del self._parts[(number, ref)]

    def _receipt(
        self, message: SubmitSm, number_id: int, message_id: str, fate: str
    ) -> bytes | None:
        if fate == "silent":
            return None
        stat, err, state = _RECEIPT.get(fate, ("DELIVRD", 0, 2))
        now = datetime.now(UTC).strftime("%y%m%d%H%M")
        snippet = "".join(c for c in message.short_message[:20] if c.isascii() and c.isprintable())
        text = (
            f"id:{number_id:010d} sub:001 dlvrd:{'001' if stat == 'DELIVRD' else '000'} "
            f"submit date:{now} done date:{now} stat:{stat} err:{err:03d} text:{snippet}"
        )
        tlvs = (
            [OptionalParam(RECEIPTED_MESSAGE_ID, message_id), OptionalParam(MESSAGE_STATE, state)]
            if self.receipt_tlvs
            else []
        )
        return DeliverSm(
            sequence_num=next(self._seq),
            short_message=text,
            source=message.destination,
            destination=message.source,
            esm_class=0x04,
            registered_delivery=0,
            optional_params=tlvs,
        ).pdu()

    def _reply(self, number: str, to: str) -> bytes:
        self.handsets.opted_out.add(number)
        return DeliverSm(
            sequence_num=next(self._seq),
            short_message="STOP",
            source=PhoneNumber(number[1:], TON.INTERNATIONAL, NPI.ISDN),
            destination=PhoneNumber(to, TON.ALPHANUMERIC, NPI.UNKNOWN),
            esm_class=0x00,
            registered_delivery=0,
        ).pdu()

    async def _later(self, writer: asyncio.StreamWriter, pdu: bytes, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        if not writer.is_closing():
            writer.write(pdu)


async def _main(port: int, delay: float) -> None:
    async with SMSC(port=port, receipt_delay=delay) as smsc:
        print(f"SMSC listening on 127.0.0.1:{smsc.port}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="An SMSC on loopback (SMPP 3.4)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--receipt-delay", type=float, default=0.0)
    args = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.port, args.receipt_delay))
