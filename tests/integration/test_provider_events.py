"""Provider events in, over real HTTP handling, on SQLite and PostgreSQL.

Signatures are made here with keys the tests generate; Amazon SNS's signing certificate is one
the test issues, served over HTTPS from loopback under SNS's own name (a trustme CA, the
``POSTWARDEN_HTTP_RESOLVE`` and ``_CA_FILE`` settings). Every refusal is checked for its
status code and for leaving nothing recorded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import provider_payloads as payloads
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from postwarden.domain import verp
from postwarden.domain.status import Kind
from postwarden.inbound.webhooks import sns
from postwarden.intake import accept, schemas
from postwarden.settings import Settings
from postwarden.store import accounts, recorder, suppression
from postwarden.store import tables as t
from postwarden.web.app import create_app

SNS_HOST = "sns.us-east-1.amazonaws.com"
CERT_PATH = "/SimpleNotificationService-0123456789abcdef.pem"
CERT_URL = f"https://{SNS_HOST}{CERT_PATH}"
TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-events"
SECRET = b"secret"
POLICY = suppression.Policy()


# region an SNS of our own: a signing key, its certificate, served over HTTPS on loopback


def _signing_cert(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SNS_HOST)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


class FakeSNS:
    """HTTPS on loopback as sns.us-east-1.amazonaws.com: the signing certificate and the
    subscription confirmations (each GET of /?Action=ConfirmSubscription is kept)."""

    def __init__(self, tmp: Path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.cert = _signing_cert(self.key)
        self.confirmed: list[str] = []
        self.ca = trustme.CA()
        self.ca_file = tmp / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert(SNS_HOST).configure_cert(context)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == CERT_PATH:
                    body = outer.cert
                elif self.path.startswith("/?Action=ConfirmSubscription"):
                    outer.confirmed.append(self.path)
                    body = b"<ConfirmSubscriptionResponse/>"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def sign(self, message: dict[str, Any], version: str = "1", key: Any = None) -> dict[str, Any]:
        message = {"SignatureVersion": version, "SigningCertURL": CERT_URL, **message}
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = (key or self.key).sign(sns.canonical(message), padding.PKCS1v15(), algorithm)
        return message | {"Signature": base64.b64encode(signature).decode()}

    def notification(
        self, ses: dict[str, Any], message_id: str = "", **more: Any
    ) -> dict[str, Any]:
        return {
            "Type": "Notification",
            "MessageId": message_id or f"sns-{time.monotonic_ns()}",
            "TopicArn": TOPIC,
            "Message": json.dumps(ses),
            "Timestamp": "2017-08-05T00:41:02.669Z",
            **more,
        }


@pytest.fixture
def fake_sns(tmp_path: Path) -> Iterator[FakeSNS]:
    server = FakeSNS(tmp_path)
    yield server
    server.close()


# endregion
# region the app, an account, its messages


@pytest.fixture
def client(settings: Settings, engine: Engine, fake_sns: FakeSNS) -> Iterator[TestClient]:
    settings = settings.model_copy(
        update={
            "http": settings.http.model_copy(
                update={
                    "allow_private": True,
                    "resolve": {(SNS_HOST, 443): ("127.0.0.1", fake_sns.port)},
                    "ca_file": str(fake_sns.ca_file),
                }
            )
        }
    )
    with TestClient(create_app(settings, engine, SECRET)) as client:
        yield client


@pytest.fixture
def auth(account_key: tuple[accounts.Account, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {account_key[1]}"}


def relayed(engine: Engine, account: accounts.Account, to: str, provider_id: str | None) -> int:
    """A message the relay took, calling it ``provider_id`` in its 250 reply."""
    body = schemas.MessageIn.model_validate(
        {"from": "app@acme.test", "to": to, "subject": "s", "text": "t"}
    )
    with engine.begin() as conn:
        mid = accept.submit_message(conn, account, body, accept.Limits(10**7, 10**5)).id
        extra = {mid: {"provider_message_id": provider_id}} if provider_id else None
        recorder.record(
            conn,
            [recorder.Fact(mid, Kind.RELAYED, "smtp", dedupe_key="attempt:1")],
            policy=POLICY,
            extra=extra,
        )
    return mid


def message(engine: Engine, mid: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(t.messages).where(t.messages.c.id == mid)).one()


def kept(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(t.provider_events).order_by(t.provider_events.c.id)))


def nothing_recorded(engine: Engine, mid: int) -> None:
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(t.provider_events)) == 0
        assert conn.scalar(select(func.count()).select_from(t.suppressions)) == 0
        kinds = conn.scalars(select(t.events.c.kind).where(t.events.c.message_id == mid)).all()
    assert kinds == ["relayed"]
    assert message(engine, mid).status == "sent"


def set_up(client: TestClient, auth: dict[str, str], provider: str, **config: Any) -> str:
    answer = client.put(f"/v1/providers/{provider}", json=config, headers=auth)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["path"])


# endregion
# region Amazon SES through SNS


@pytest.mark.parametrize("version", ["1", "2"])
def test_ses_bounce_through_sns_is_verified_matched_and_acted_on(
    client: TestClient,
    auth: dict[str, str],
    engine: Engine,
    fake_sns: FakeSNS,
    account_key: tuple[accounts.Account, str],
    version: str,
) -> None:
    path = set_up(client, auth, "sns", topic_arns=[TOPIC])
    mid = relayed(engine, account_key[0], "gone@example.test", "0100015e-ses-id-1")
    note = fake_sns.sign(
        fake_sns.notification(payloads.ses_bounce("0100015e-ses-id-1", "gone@example.test")),
        version,
    )
    answer = client.post(path, content=json.dumps(note))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "received": 1,
        "duplicates": 0,
        "applied": 1,
        "unmatched": 0,
        "ignored": 0,
    }
    row = message(engine, mid)
    assert (row.status, row.reason) == ("bounced", "userunknown")
    (event,) = kept(engine)
    assert (event.state, event.matched_by, event.message_id) == ("applied", "provider_id", mid)
    with engine.connect() as conn:
        (entry,) = conn.execute(select(t.suppressions)).all()
    assert (entry.address, entry.source) == ("gone@example.test", "sns")
    # SNS delivers at least once: the same notification again changes nothing.
    again = client.post(path, content=json.dumps(note))
    assert again.json()["duplicates"] == 1
    with engine.connect() as conn:
        n = conn.scalar(select(func.count()).where(t.events.c.message_id == mid))
    assert n == 2  # relayed, bounced


def test_ses_delivery_then_late_bounce_and_complaint_by_own_message_id(
    client: TestClient,
    auth: dict[str, str],
    engine: Engine,
    fake_sns: FakeSNS,
    account_key: tuple[accounts.Account, str],
) -> None:
    path = set_up(client, auth, "sns", topic_arns=[TOPIC])
    mid = relayed(engine, account_key[0], "late@example.test", "ses-2")
    for ses in (
        payloads.ses_delivery("ses-2", "late@example.test"),
        payloads.ses_bounce("ses-2", "late@example.test", when="2099-01-01T00:00:00Z"),
    ):
        answer = client.post(path, content=json.dumps(fake_sns.sign(fake_sns.notification(ses))))
        assert answer.status_code == 200, answer.text
    row = message(engine, mid)
    assert row.status == "delivered" and "bounced_after_delivery" in row.flags
    # A complaint naming the message only by Postwarden's own Message-ID (the SES id unknown).
    other = relayed(engine, account_key[0], "angry@example.test", None)
    own = f"<{verp.token(SECRET, other)}@bounces.acme.test>"
    ses = payloads.ses_complaint(own, "angry@example.test")
    answer = client.post(path, content=json.dumps(fake_sns.sign(fake_sns.notification(ses))))
    assert answer.json()["applied"] == 1
    assert "complained" in message(engine, other).flags
    assert kept(engine)[-1].matched_by == "message-id"


def test_ses_transient_bounce_is_soft(
    client: TestClient,
    auth: dict[str, str],
    engine: Engine,
    fake_sns: FakeSNS,
    account_key: tuple[accounts.Account, str],
) -> None:
    path = set_up(client, auth, "sns", topic_arns=[TOPIC])
    mid = relayed(engine, account_key[0], "full@example.test", "ses-3")
    ses = payloads.ses_bounce("ses-3", "full@example.test", permanent=False)
    client.post(path, content=json.dumps(fake_sns.sign(fake_sns.notification(ses))))
    row = message(engine, mid)
    assert (row.status, row.reason) == ("bounced", "mailboxfull")
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(t.suppressions)) == 0
        hard = conn.scalar(select(t.events.c.hard).where(t.events.c.kind == "bounced"))
    assert hard is False


@pytest.mark.parametrize(
    "forge",
    [
        "another key",
        "a changed message",
        "a certificate on another host",
        "a certificate over http",
        "a topic not allowed",
        "no signature",
    ],
)
def test_forged_sns_messages_are_refused_and_nothing_recorded(
    client: TestClient,
    auth: dict[str, str],
    engine: Engine,
    fake_sns: FakeSNS,
    account_key: tuple[accounts.Account, str],
    forge: str,
) -> None:
    path = set_up(client, auth, "sns", topic_arns=[TOPIC])
    mid = relayed(engine, account_key[0], "gone@example.test", "ses-4")
    note = fake_sns.notification(payloads.ses_bounce("ses-4", "gone@example.test"))
    if forge == "another key":
        signed = fake_sns.sign(note, key=rsa.generate_private_key(65537, 2048))
    elif forge == "a changed message":
        signed = fake_sns.sign(note)
        signed["Message"] = signed["Message"].replace("Permanent", "Transient")
    elif forge == "a certificate on another host":
        signed = fake_sns.sign(note) | {
            "SigningCertURL": f"https://{SNS_HOST}.evil.test{CERT_PATH}"
        }
    elif forge == "a certificate over http":
        signed = fake_sns.sign(note) | {"SigningCertURL": f"http://{SNS_HOST}{CERT_PATH}"}
    elif forge == "a topic not allowed":
        signed = fake_sns.sign(note | {"TopicArn": "arn:aws:sns:us-east-1:666:attacker"})
    else:
        signed = fake_sns.sign(note)
        del signed["Signature"]
    answer = client.post(path, content=json.dumps(signed))
    assert answer.status_code == 403, answer.text
    nothing_recorded(engine, mid)


def test_sns_subscription_is_confirmed_only_for_an_allowed_topic(
    client: TestClient, auth: dict[str, str], engine: Engine, fake_sns: FakeSNS
) -> None:
    path = set_up(client, auth, "sns", topic_arns=[TOPIC])
    subscribe = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a",
        "TopicArn": TOPIC,
        "Message": "You have chosen to subscribe to the topic. To confirm, visit the URL.",
        "SubscribeURL": f"https://{SNS_HOST}/?Action=ConfirmSubscription&TopicArn={TOPIC}"
        "&Token=2336412f37fb687f5d51e6e2",
        "Timestamp": "2012-04-26T20:45:04.751Z",
    }
    outsider = fake_sns.sign(subscribe | {"TopicArn": "arn:aws:sns:us-east-1:666:attacker"})
    assert client.post(path, content=json.dumps(outsider)).status_code == 403
    assert fake_sns.confirmed == []
    answer = client.post(path, content=json.dumps(fake_sns.sign(subscribe, "2")))
    assert answer.status_code == 200, answer.text
    assert len(fake_sns.confirmed) == 1
    (event,) = kept(engine)
    assert (event.event_type, event.state) == ("SubscriptionConfirmation", "ignored")


def test_an_unknown_url_is_404(client: TestClient, fake_sns: FakeSNS) -> None:
    assert client.post("/v1/providers/sns/events/nope", content=b"{}").status_code == 404


# endregion
# region SendGrid


def _sendgrid_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, base64.b64encode(der).decode()


def _sendgrid_headers(key: ec.EllipticCurvePrivateKey, body: bytes, when: int) -> dict[str, str]:
    signature = key.sign(str(when).encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": str(when),
        "content-type": "application/json",
    }


def test_sendgrid_events_are_verified_and_applied(
    client: TestClient,
    auth: dict[str, str],
    engine: Engine,
    account_key: tuple[accounts.Account, str],
) -> None:
    key, public = _sendgrid_key()
    path = set_up(client, auth, "sendgrid", public_key=public)
    mid = relayed(engine, account_key[0], "gone@example.test", "14c5d75ce93.dfd.64b469")
    body = json.dumps(payloads.sendgrid_events("14c5d75ce93.dfd.64b469", "gone@example.test"))
    answer = client.post(
        path, content=body, headers=_sendgrid_headers(key, body.encode(), int(time.time()))
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["applied"] == 3 and answer.json()["ignored"] == 1
    row = message(engine, mid)
    assert row.status == "opened" and "bounced_after_delivery" in row.flags
    with engine.connect() as conn:
        opened = conn.scalar(select(t.events.c.data).where(t.events.c.kind == "opened"))
    assert opened["machine"] is True


@pytest.mark.parametrize("forge", ["wrong key", "stale", "replayed", "unsigned", "changed body"])
def test_sendgrid_refusals(
    client: TestClient,
    auth: dict[str, str],
    engine: Engine,
    account_key: tuple[accounts.Account, str],
    forge: str,
) -> None:
    key, public = _sendgrid_key()
    path = set_up(client, auth, "sendgrid", public_key=public)
    mid = relayed(engine, account_key[0], "gone@example.test", "sg-1")
    body = json.dumps(payloads.sendgrid_events("sg-1", "gone@example.test")).encode()
    now = int(time.time())
    headers = _sendgrid_headers(key, body, now)
    expected = 403
    if forge == "wrong key":
        headers = _sendgrid_headers(_sendgrid_key()[0], body, now)
    elif forge == "stale":
        headers = _sendgrid_headers(key, body, now - 600)
    elif forge == "unsigned":
        headers = {"content-type": "application/json"}
        expected = 401
    elif forge == "changed body":
        body = body.replace(b"bounce", b"delivered")
    else:
        assert client.post(path, content=body, headers=headers).status_code == 200
        with engine.begin() as conn:  # what the first one did, undone, to see the replay alone
            conn.execute(t.provider_events.delete())
            conn.execute(t.suppressions.delete())
            conn.execute(t.events.delete().where(t.events.c.kind != "relayed"))
            conn.execute(t.messages.update().values(status="sent", flags=[]))
    answer = client.post(path, content=body, headers=headers)
    assert answer.status_code == expected, answer.text
    nothing_recorded(engine, mid)


# endregion
# region Mailgun


def _mailgun(signing_key: str, event: dict[str, Any], stamp: int, token: str) -> dict[str, Any]:
    digest = hmac.new(signing_key.encode(), f"{stamp}{token}".encode(), hashlib.sha256)
    return {
        "signature": {"timestamp": str(stamp), "token": token, "signature": digest.hexdigest()},
        "event-data": event,
    }


@pytest.mark.parametrize("forge", [None, "wrong key", "stale", "replayed", "unsigned"])
def test_mailgun_events_and_refusals(
    client: TestClient,
    auth: dict[str, str],
    engine: Engine,
    account_key: tuple[accounts.Account, str],
    forge: str | None,
) -> None:
    path = set_up(client, auth, "mailgun", signing_key="key-3ax6xnjp29jd6fds4gc373sgvjxteol0")
    mid = relayed(engine, account_key[0], "gone@example.test", None)
    own = f"{verp.token(SECRET, mid)}@bounces.acme.test"
    now = int(time.time())
    event = payloads.mailgun_failed(own, "gone@example.test", now)
    body = _mailgun("key-3ax6xnjp29jd6fds4gc373sgvjxteol0", event, now, "a8ce0edb2dd8301dee6c")
    expected = 403
    if forge is None:
        answer = client.post(path, json=body)
        assert answer.status_code == 200, answer.text
        row = message(engine, mid)
        assert (row.status, row.reason) == ("bounced", "userunknown")
        assert kept(engine)[0].matched_by == "message-id"
        return
    if forge == "wrong key":
        body = _mailgun("another-key", event, now, "a8ce0edb2dd8301dee6c")
    elif forge == "stale":
        body = _mailgun("key-3ax6xnjp29jd6fds4gc373sgvjxteol0", event, now - 301, "tok")
    elif forge == "unsigned":
        body = {"event-data": event}
        expected = 401
    else:
        assert client.post(path, json=body).status_code == 200
        with engine.begin() as conn:
            conn.execute(t.provider_events.delete())
            conn.execute(t.suppressions.delete())
            conn.execute(t.events.delete().where(t.events.c.kind != "relayed"))
            conn.execute(t.messages.update().values(status="sent", reason=None))
    answer = client.post(path, json=body)
    assert answer.status_code == expected, answer.text
    nothing_recorded(engine, mid)


# endregion
# region Postmark


@pytest.mark.parametrize("forge", [None, "no credentials", "wrong password", "address"])
def test_postmark_events_and_refusals(
    client: TestClient,
    auth: dict[str, str],
    engine: Engine,
    account_key: tuple[accounts.Account, str],
    forge: str | None,
) -> None:
    allowed = ["3.134.147.250", "50.31.156.6/32"] if forge == "address" else ["testclient"]
    if forge != "address":
        allowed = []
    path = set_up(client, auth, "postmark", username="pm", password="s3cret", allowed_ips=allowed)
    mid = relayed(engine, account_key[0], "gone@example.test", "883953f4-6105-42a2-a16a")
    body = payloads.postmark_bounce("883953f4-6105-42a2-a16a", "gone@example.test")
    user = "pm:wrong" if forge == "wrong password" else "pm:s3cret"
    headers = {"Authorization": "Basic " + base64.b64encode(user.encode()).decode()}
    if forge == "no credentials":
        headers = {}
    answer = client.post(path, json=body, headers=headers)
    if forge is None:
        assert answer.status_code == 200, answer.text
        row = message(engine, mid)
        assert (row.status, row.reason) == ("bounced", "userunknown")
        return
    assert answer.status_code == (403 if forge == "address" else 401), answer.text
    if answer.status_code == 401:
        assert answer.headers["www-authenticate"].startswith("Basic")
    nothing_recorded(engine, mid)


def test_postmark_soft_bounce_matched_by_address_and_unmatched_kept(
    client: TestClient,
    auth: dict[str, str],
    engine: Engine,
    account_key: tuple[accounts.Account, str],
) -> None:
    path = set_up(client, auth, "postmark", username="pm", password="s3cret")
    headers = {"Authorization": "Basic " + base64.b64encode(b"pm:s3cret").decode()}
    mid = relayed(engine, account_key[0], "full@example.test", None)
    soft = payloads.postmark_bounce("unknown-id", "full@example.test", 4096)
    soft["BouncedAt"] = datetime.now(UTC).isoformat()
    answer = client.post(path, json=soft, headers=headers)
    assert answer.json()["applied"] == 1
    row = message(engine, mid)
    assert row.status == "bounced"
    assert kept(engine)[0].matched_by == "address"
    with engine.connect() as conn:
        assert conn.scalar(select(t.events.c.hard).where(t.events.c.kind == "bounced")) is False
    stranger = payloads.postmark_bounce("another-id", "nobody@example.test") | {"ID": 99}
    answer = client.post(path, json=stranger, headers=headers)
    assert answer.json()["unmatched"] == 1
    listed = client.get("/v1/providers/events", headers=auth).json()["items"]
    assert [(e["recipient"], e["state"]) for e in listed] == [("nobody@example.test", "unmatched")]


# endregion
