"""The SMS channel end to end against the loopback providers (no mocks): messages stored,
claimed and built from the database, sent to the Twilio-compatible server, the Vonage-
compatible server or the SMSC, and their receipts verified, parsed and matched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
import sms_rows
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from postwarden.domain import clock, receipts, sms
from postwarden.inbound.webhooks import guard, twilio, vonage
from postwarden.outbound.channels import base
from postwarden.outbound.channels.sms import channel as sms_channel
from postwarden.outbound.channels.sms import provider, smpp
from postwarden.settings import Settings, SMSSettings
from postwarden.store import accounts
from postwarden.testing import handsets as h
from postwarden.testing.http import Loopback
from postwarden.testing.smsc import SMSC
from postwarden.testing.twilio_server import TwilioServer
from postwarden.testing.vonage_server import VonageServer

LONG = "Your order has shipped. " * 12  # 288 GSM characters: two parts
UCS2 = "Ваш код: 4242. Не сообщайте его никому 🙂 " * 2  # UCS-2, surrogate pairs: two parts


class Receiver:
    """Postwarden's webhook side as the web layer will wire it: verify, then parse."""

    def __init__(self, twilio_token: str = "", vonage_secret: str = "") -> None:
        self.twilio_token = twilio_token
        self.vonage_secret = vonage_secret
        self.replays = guard.Replays(timedelta(days=7))
        self.receipts: list[receipts.Receipt] = []
        self.replies: list[receipts.Reply] = []
        self.refused: list[guard.Refused] = []
        self.seen: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.app = Starlette(
            routes=[
                Route("/hooks/twilio", self.twilio, methods=["POST"]),
                Route("/hooks/twilio-in", self.twilio, methods=["POST"]),
                Route("/hooks/vonage", self.vonage, methods=["POST"]),
                Route("/hooks/vonage-in", self.vonage, methods=["POST"]),
            ]
        )

    async def twilio(self, request: Request) -> PlainTextResponse:
        url, params = str(request.url), {k: str(v) for k, v in (await request.form()).items()}
        self.seen.append((url, params, dict(request.headers)))
        refused = twilio.verify(
            self.twilio_token,
            url,
            params,
            request.headers,
            now=clock.now(),
            max_age=timedelta(days=7),
            replays=self.replays,
        )
        return self._take(
            refused, twilio.status(url, params) if "-in" not in url else twilio.reply(params)
        )

    async def vonage(self, request: Request) -> PlainTextResponse:
        params = {k: str(v) for k, v in (await request.form()).items()}
        refused = vonage.verify(
            self.vonage_secret,
            "sha256",
            params,
            now=clock.now(),
            max_skew=timedelta(minutes=5),
            replays=self.replays,
        )
        inbound = request.url.path.endswith("-in")
        return self._take(refused, vonage.reply(params) if inbound else vonage.receipt(params))

    def _take(self, refused: guard.Refused | None, event: object) -> PlainTextResponse:
        if refused is not None:
            self.refused.append(refused)
            return PlainTextResponse(refused.why, status_code=403)
        if isinstance(event, receipts.Receipt):
            self.receipts.append(event)
        elif isinstance(event, receipts.Reply):
            self.replies.append(event)
        return PlainTextResponse("")


def settings_for(url: str, callback: str = "http://127.0.0.1:9/hooks") -> Settings:
    return Settings(
        sms=SMSSettings(provider=url, callback_url=callback, max_segments=3, timeout=5, window=5)
    )


@pytest.fixture
def account_id(engine: Engine) -> int:
    with engine.begin() as conn:
        return accounts.create(conn, "acme", "bounces.acme.test")[0].id


HANDSET_TEXTS = [
    (h.DELIVERED, "Your code is 1234"),
    (h.UNKNOWN, "Hello"),
    (h.UNREACHABLE_THEN_DELIVERED, "Hello"),
    (h.FILTERED, "WIN A PRIZE NOW"),
    (h.STOP, "Weekly news"),
    (h.LANDLINE, "Hello"),
    (h.INVALID, "Hello"),
    (h.THROTTLED, "Hello"),
    (h.SILENT, "Hello"),
    (h.DELIVERED, LONG),
    (h.DELIVERED, UCS2),
]
BUILD_FAILURES = [
    ("+1 099 555 0100", "Hello", "userunknown", "not a valid phone number"),
    ("+44 20 7946 0000", "Hello", "notaccept", "only reach mobiles"),
    (h.DELIVERED, "x" * (153 * 3 + 1), "contenterror", "needs 4 segments"),
]


def verdicts_by_number(built, verdicts):  # type: ignore[no-untyped-def]
    out: dict[tuple[str, str], base.Verdict] = {}
    for item, verdict in zip(built, verdicts, strict=True):
        out[(item.to, item.payload.text)] = verdict
    return out


async def test_smpp_end_to_end(engine: Engine, account_id: int) -> None:
    events: list[smpp.Event] = []

    async def keep(event: smpp.Event) -> None:
        events.append(event)

    async with SMSC(receipt_delay=0.02) as smsc:
        channel = sms_channel.open_channel(settings_for(smsc.provider_url), on_event=keep)
        sms_rows.store(
            engine, account_id, HANDSET_TEXTS + [(n, t) for n, t, _r, _w in BUILD_FAILURES]
        )
        claimed = sms_rows.claim(engine)
        built = sms_rows.build(engine, channel, claimed)
        assert len(built) == len(claimed) == len(HANDSET_TEXTS) + len(BUILD_FAILURES)
        failures = [b for b in built if isinstance(b, base.Verdict)]
        assert [(f.outcome, f.reason) for f in failures] == [
            ("failed", r) for *_x, r, _w in BUILD_FAILURES
        ]
        for failure, (*_x, words) in zip(failures, BUILD_FAILURES, strict=True):
            assert words in failure.detail and failure.evidence is None
        outgoing = [b for b in built if isinstance(b, base.Outgoing)]
        verdicts = await channel.send(outgoing)
        by = verdicts_by_number(outgoing, verdicts)
        assert by[(h.INVALID, "Hello")].outcome == "failed"
        assert by[(h.INVALID, "Hello")].code == "0x0000000B"
        assert by[(h.THROTTLED, "Hello")].outcome == "sent"  # retried after ESME_RTHROTTLED
        assert "ESME_RTHROTTLED" in by[(h.THROTTLED, "Hello")].evidence.transcript  # type: ignore[union-attr]
        sent = {k: v for k, v in by.items() if v.outcome == "sent"}
        assert len(sent) == len(HANDSET_TEXTS) - 1
        assert all(
            v.evidence and v.evidence.via == "smpp" and v.provider_message_id for v in sent.values()
        )
        assert by[(h.DELIVERED, LONG)].provider_message_id.count(",") == 1  # type: ignore[union-attr]
        assert (h.DELIVERED, LONG) in smsc.texts and (h.DELIVERED, UCS2) in smsc.texts
        ucs2 = [s for s in smsc.submits if s.destination == h.DELIVERED and s.data_coding == 8]
        assert len(ucs2) == 2 and all(s.total == 2 for s in ucs2)
        await smsc.settle()
        await asyncio.sleep(0.1)
        await channel.aclose()

    # receipts matched to messages through their provider ids (hex id, decimal receipt text)
    ids = {}
    for (number, _text), verdict, c in zip(
        by,
        verdicts,
        [c for c, b in zip(claimed, built, strict=True) if isinstance(b, base.Outgoing)],
        strict=True,
    ):
        for pid in (verdict.provider_message_id or "").split(","):
            if pid:
                ids[pid] = c.id
        del number
    found = [e for e in events if isinstance(e, receipts.Receipt)]
    matched, unmatched = receipts.match(
        found, lambda wanted: {w: ids[w] for w in wanted if w in ids}
    )
    assert unmatched == []
    number_of = {c.id: c.to_addr for c in claimed}
    final = {number_of[mid]: r for mid, r in matched}
    assert final[h.DELIVERED].state == "delivered"
    assert final[h.UNKNOWN].meaning.cause == "unknown_number" and final[h.UNKNOWN].meaning.hard  # type: ignore[union-attr]
    assert final[h.UNREACHABLE_THEN_DELIVERED].meaning.cause == "unreachable"  # type: ignore[union-attr]
    assert final[h.FILTERED].meaning.cause == "carrier_filtered"  # type: ignore[union-attr]
    assert final[h.LANDLINE].meaning.cause == "not_mobile"  # type: ignore[union-attr]
    assert h.SILENT not in final
    stops = [e for e in events if isinstance(e, receipts.Reply)]
    assert [(r.from_number, r.keyword) for r in stops] == [(h.STOP, "stop")]
    assert smsc.acks and set(smsc.acks) == {0}


def _outgoing(number: str, text: str, i: int, sender: str = "Acme") -> base.Outgoing:
    return base.Outgoing(i, number, provider.SMS(text, sender, sms.encode(text)))


@pytest.fixture
async def smsc() -> AsyncIterator[SMSC]:
    async with SMSC(receipts_enabled=False) as server:
        yield server


async def test_unreachable_then_delivered_on_the_next_attempt() -> None:
    async with SMSC() as smsc:
        events: list[smpp.Event] = []
        p = smpp.SMPPProvider(provider.parse_url(smsc.provider_url), on_event=_into(events))
        first = await p.submit(_outgoing(h.UNREACHABLE_THEN_DELIVERED, "hi", 1))
        second = await p.submit(_outgoing(h.UNREACHABLE_THEN_DELIVERED, "hi", 2))
        await _until(lambda: len(events) == 2)
        await p.aclose()
    states = {e.provider_message_id: e.state for e in events}  # type: ignore[union-attr]
    assert states[first.provider_message_id] == "bounced"  # type: ignore[index]
    assert states[second.provider_message_id] == "delivered"  # type: ignore[index]


def _into(events: list[smpp.Event]):  # type: ignore[no-untyped-def]
    async def keep(event: smpp.Event) -> None:
        events.append(event)

    return keep


async def _until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


NUMBERS = [f"+1202555{n:04d}" for n in range(1000, 1040)]


async def test_connection_cut_mid_window_every_message_gets_a_verdict(smsc: SMSC) -> None:
    smsc.drop_after = 12
    p = smpp.SMPPProvider(provider.parse_url(smsc.provider_url), window=5, timeout=3)
    items = [_outgoing(n, "hello", i) for i, n in enumerate(NUMBERS)]
    verdicts = await asyncio.gather(*(p.submit(item) for item in items))
    assert len(verdicts) == len(items)
    lost = [v for v in verdicts if v.outcome == "deferred"]
    assert 1 <= len(lost) <= p.window  # only the window in flight when the bind was cut
    assert all(v.outcome == "sent" for v in verdicts if v not in lost)
    assert all("before the SMSC answered; it may have taken it" in v.detail for v in lost)
    assert max(smsc.per_number.values()) == 1  # nothing sent twice within the send
    assert smsc.binds == 2  # the rest went on a new bind
    again = await asyncio.gather(*(p.submit(items[v.message_id]) for v in lost))
    assert all(v.outcome == "sent" for v in again)
    twice = [n for n, count in smsc.per_number.items() if count > 1]
    assert len(twice) <= p.window and max(smsc.per_number.values()) <= 2
    await p.aclose()


async def test_receipt_before_the_submit_sm_resp_is_kept_and_matched() -> None:
    async with SMSC(receipt_first=True, receipt_tlvs=False) as smsc:
        events: list[smpp.Event] = []
        p = smpp.SMPPProvider(provider.parse_url(smsc.provider_url), on_event=_into(events))
        verdict = await p.submit(_outgoing(h.DELIVERED, "hi", 9))
        await _until(lambda: events)
        await p.aclose()
    (receipt,) = events
    assert isinstance(receipt, receipts.Receipt)
    # before the verdict was recorded nothing knows the id: unmatched, not dropped
    matched, unmatched = receipts.match([receipt], lambda wanted: {})
    assert matched == [] and unmatched == [receipt]
    # once it is: the decimal, zero-padded id of the text finds the hex id of the response
    assert receipt.provider_message_id.startswith("00000")
    matched, unmatched = receipts.match(
        [receipt], lambda wanted: {w: 9 for w in wanted if w == verdict.provider_message_id}
    )
    assert matched == [(9, receipt)] and unmatched == []


async def test_throttled_smsc_defers_with_retry_after(smsc: SMSC) -> None:
    smsc.throttle = True
    p = smpp.SMPPProvider(provider.parse_url(smsc.provider_url), throttle_retries=2)
    verdict = await p.submit(_outgoing(h.DELIVERED, "hi", 1))
    assert (verdict.outcome, verdict.reason) == ("deferred", "speeding")
    assert verdict.retry_after and verdict.retry_after > 0
    assert smsc.per_number[h.DELIVERED] == 3
    await p.aclose()


async def test_refused_bind_defers_at_once_and_backs_off(smsc: SMSC) -> None:
    config = provider.parse_url(smsc.provider_url.replace(":secret@", ":wrong@"))
    p = smpp.SMPPProvider(config)
    first = await p.submit(_outgoing(h.DELIVERED, "hi", 1))
    assert (
        first.outcome == "deferred" and "bind_transceiver refused: ESME_RINVPASWD" in first.detail
    )
    second = await p.submit(_outgoing(h.DELIVERED, "hi", 2))
    assert second.outcome == "deferred" and "next bind attempt in" in second.detail
    assert smsc.binds == 0 and not smsc.submits
    await p.aclose()


async def test_dropped_bind_reconnects(smsc: SMSC) -> None:
    p = smpp.SMPPProvider(provider.parse_url(smsc.provider_url))
    assert (await p.submit(_outgoing(h.DELIVERED, "a", 1))).outcome == "sent"
    smsc.drop()
    await asyncio.sleep(0.05)
    assert (await p.submit(_outgoing(h.DELIVERED, "b", 2))).outcome == "sent"
    assert smsc.binds == 2 and p.binds == 2
    await p.aclose()


async def test_enquire_link_keeps_an_idle_bind(smsc: SMSC) -> None:
    p = smpp.SMPPProvider(provider.parse_url(smsc.provider_url), enquire_interval=0.05)
    assert (await p.submit(_outgoing(h.DELIVERED, "a", 1))).outcome == "sent"
    await _until(lambda: smsc.enquiries >= 2)
    assert p.binds == 1
    await p.aclose()


async def test_a_receipt_not_handed_on_is_refused_so_the_smsc_resends_it() -> None:
    async def broken(event: smpp.Event) -> None:
        raise RuntimeError("database down")

    async with SMSC() as smsc:
        p = smpp.SMPPProvider(provider.parse_url(smsc.provider_url), on_event=broken)
        await p.submit(_outgoing(h.DELIVERED, "a", 1))
        await _until(lambda: smsc.acks)
        await p.aclose()
    assert smsc.acks == [smpp.ESME_RX_T_APPN]


async def test_events_queue_when_nobody_takes_them() -> None:
    async with SMSC() as smsc:
        p = smpp.SMPPProvider(provider.parse_url(smsc.provider_url))
        verdict = await p.submit(_outgoing(h.DELIVERED, "a", 1))
        event = await asyncio.wait_for(p.events.get(), 5)
        await p.aclose()
    assert (
        isinstance(event, receipts.Receipt)
        and event.provider_message_id == verdict.provider_message_id
    )


async def test_sar_concatenation(smsc: SMSC) -> None:
    config = provider.parse_url(smsc.provider_url + "&concatenation=sar")
    p = smpp.SMPPProvider(config)
    assert (await p.submit(_outgoing(h.DELIVERED, LONG, 1))).outcome == "sent"
    assert (h.DELIVERED, LONG) in smsc.texts
    assert {(s.seq, s.total) for s in smsc.submits} == {(1, 2), (2, 2)}
    await p.aclose()


# -- Twilio ----------------------------------------------------------------------------------
async def test_twilio_end_to_end(engine: Engine, account_id: int) -> None:
    async with TwilioServer(delay=0.02) as server:
        receiver = Receiver(twilio_token=server.token)
        async with Loopback(receiver.app) as hooks, httpx.AsyncClient() as client:
            server.inbound_url = f"{hooks.url}/hooks/twilio-in"
            channel = sms_channel.open_channel(
                settings_for(server.provider_url, f"{hooks.url}/hooks"), client=client
            )
            sms_rows.store(engine, account_id, HANDSET_TEXTS)
            claimed = sms_rows.claim(engine)
            outgoing = sms_rows.build(engine, channel, claimed)
            assert all(isinstance(o, base.Outgoing) for o in outgoing)
            verdicts = await channel.send(outgoing)
            await server.settle()
            by = verdicts_by_number(outgoing, verdicts)
            assert (
                by[(h.INVALID, "Hello")].outcome == "failed"
                and by[(h.INVALID, "Hello")].code == "21211"
            )
            assert by[(h.THROTTLED, "Hello")].outcome == "deferred"
            assert by[(h.THROTTLED, "Hello")].retry_after == 1.0
            assert by[(h.DELIVERED, "Your code is 1234")].provider_message_id.startswith("SM")  # type: ignore[union-attr]
            assert not receiver.refused
            final = {}
            for r in receiver.receipts:
                assert r.message_id in {c.id for c in claimed}  # matched by our id in the URL
                if r.state != "sent":
                    final[r.to] = r
            assert final[h.DELIVERED].state == "delivered"
            assert final[h.UNKNOWN].meaning.cause == "unknown_number"  # type: ignore[union-attr]
            assert final[h.FILTERED].meaning.cause == "carrier_filtered"  # type: ignore[union-attr]
            assert final[h.LANDLINE].meaning.cause == "not_mobile"  # type: ignore[union-attr]
            assert final[h.UNREACHABLE_THEN_DELIVERED].meaning.cause == "unreachable"  # type: ignore[union-attr]
            assert [(r.from_number, r.keyword) for r in receiver.replies] == [(h.STOP, "stop")]

            # after STOP, Twilio refuses the number: a soft bounce that says "unsubscribed"
            again = await channel.send([o for o in outgoing if o.to == h.STOP])
            assert (again[0].outcome, again[0].code) == ("bounced", "21610")
            assert receipts.explain("twilio", again[0].code).unsubscribed

            # forged and replayed callbacks are refused and nothing is taken from them
            taken = len(receiver.receipts)
            url, params, headers = receiver.seen[0]
            forged = await server.post(url, params, token="not-the-token")
            assert forged.status == 403 and receiver.refused[-1].why == "forged"
            replay = await client.post(
                url,
                data=params,
                headers={
                    k: v
                    for k, v in headers.items()
                    if k.lower() in ("x-twilio-signature", "i-twilio-idempotency-token")
                },
            )
            assert replay.status_code == 403 and receiver.refused[-1].why == "replayed"
            assert len(receiver.receipts) == taken
            await channel.aclose()


async def test_vonage_end_to_end(engine: Engine, account_id: int) -> None:
    async with VonageServer(delay=0.02, signature_secret="sig-secret") as server:
        receiver = Receiver(vonage_secret="sig-secret")
        async with Loopback(receiver.app) as hooks, httpx.AsyncClient() as client:
            server.inbound_url = f"{hooks.url}/hooks/vonage-in"
            channel = sms_channel.open_channel(
                settings_for(server.provider_url, f"{hooks.url}/hooks"), client=client
            )
            sms_rows.store(
                engine,
                account_id,
                [(h.DELIVERED, LONG), (h.UNKNOWN, "hi"), (h.STOP, "hi"), (h.INVALID, "hi")],
            )
            claimed = sms_rows.claim(engine)
            outgoing = sms_rows.build(engine, channel, claimed)
            verdicts = await channel.send(outgoing)
            await server.settle()
            assert [v.outcome for v in verdicts] == ["sent", "sent", "sent", "failed"]
            assert verdicts[0].provider_message_id.count(",") == 1  # type: ignore[union-attr]
            assert not receiver.refused
            by_message = {}
            for r in receiver.receipts:
                by_message.setdefault(r.message_id, []).append(r)
            assert len(by_message[claimed[0].id]) == 2  # one receipt per part
            assert by_message[claimed[1].id][0].meaning.cause == "unknown_number"  # type: ignore[union-attr]
            assert [(r.from_number, r.keyword) for r in receiver.replies] == [(h.STOP, "stop")]
            params, _status = server.receipts[0]
            replay = await client.post(f"{hooks.url}/hooks/vonage", data=params)
            assert replay.status_code == 403 and receiver.refused[-1].why == "replayed"
            await channel.aclose()
