"""The webhook pages through TestClient: adding an endpoint (a private address refused), its
deliveries and attempts, the dead letters and their replay, the dashboard's notice of a
disabled endpoint, and the provider events kept for review."""

from __future__ import annotations

import re
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from postwarden.domain import clock
from postwarden.domain.status import Kind
from postwarden.intake import accept, schemas
from postwarden.settings import Settings
from postwarden.store import accounts, provider_events, recorder, suppression, users, webhooks
from postwarden.store import tables as t
from postwarden.web.app import create_app

PASSWORD = "correct horse battery"


def _token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def _signed_in(settings: Settings, engine: Engine, account: accounts.Account) -> TestClient:
    with engine.begin() as conn:
        users.create(conn, account.id, "ops@acme.test", PASSWORD)
    client = TestClient(create_app(settings, engine, b"s" * 32))
    token = _token(client.get("/login").text)
    client.post(
        "/login",
        data={"email": "ops@acme.test", "password": PASSWORD, "csrf": token, "next": "/"},
        follow_redirects=False,
    )
    return client


def test_endpoints_deliveries_dead_letters_and_replay(
    settings: Settings, engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    client = _signed_in(settings, engine, account)
    token = _token(client.get("/webhooks").text)
    assert "No endpoint yet" in client.get("/webhooks").text
    refused = client.post(
        "/webhooks",
        data={"url": "http://127.0.0.1:9/hook", "csrf": token},
        follow_redirects=True,
    )
    assert "Not added" in refused.text and "loopback" in refused.text
    with engine.begin() as conn:
        assert webhooks.list_endpoints(conn, account.id) == []
        endpoint = webhooks.create_endpoint(conn, account.id, "https://hooks.example.test/pw")
        body = schemas.MessageIn.model_validate(
            {"from": "app@acme.test", "to": "a@example.test", "subject": "s", "text": "t"}
        )
        mid = accept.submit_message(conn, account, body, accept.Limits(10**7, 10**5)).id
        recorder.record(
            conn, [recorder.Fact(mid, Kind.DELIVERED, "smtp")], policy=suppression.Policy()
        )
        (delivery_id,) = conn.scalars(select(t.webhook_deliveries.c.id))
        claimed = webhooks.claim(
            conn,
            owner="test",
            limit=10,
            per_endpoint=4,
            lease=timedelta(seconds=30),
            now=clock.now(),
        )
        webhooks.finish(
            conn,
            [
                webhooks.Result(
                    delivery_id, endpoint.id, 1, clock.now(), 120, 503, "busy", "no", False, None
                )
            ],
            policy=webhooks.DisablePolicy(timedelta(0), 1),
            now=clock.now(),
        )
    assert len(claimed) == 1
    page = client.get("/webhooks").text
    assert "hooks.example.test/pw is disabled" in page and "Dead letters (1)" in page
    assert "HTTP 503" in page
    dashboard = client.get("/").text
    assert "Webhook endpoint https://hooks.example.test/pw was disabled" in dashboard
    detail = client.get(f"/webhooks/deliveries/{delivery_id}").text
    assert "HTTP 503" in detail and "busy" in detail and "120 ms" in detail
    assert "message.status_changed" in detail
    endpoint_page = client.get(f"/webhooks/{endpoint.id}").text
    assert endpoint.secret in endpoint_page
    token = _token(endpoint_page)
    client.post(f"/webhooks/{endpoint.id}/enable", data={"enabled": "1", "csrf": token})
    answer = client.post(
        f"/webhooks/deliveries/{delivery_id}/replay",
        data={"csrf": token, "back": "/webhooks"},
        follow_redirects=True,
    )
    assert "sent again" in answer.text
    with engine.connect() as conn:
        (row,) = conn.execute(select(t.webhook_deliveries)).all()
        assert webhooks.get_endpoint(conn, account.id, endpoint.id).enabled
    assert row.state == "pending"
    assert "was disabled" not in client.get("/").text
    # A POST without the CSRF token changes nothing.
    assert client.post(f"/webhooks/{endpoint.id}/delete", data={}).status_code == 403


def test_provider_events_to_review(
    settings: Settings, engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    client = _signed_in(settings, engine, account)
    with engine.begin() as conn:
        provider_events.keep(
            conn,
            account.id,
            "postmark",
            [
                provider_events.Row(
                    "Bounce:1",
                    "Bounce/HardBounce",
                    clock.now(),
                    "stranger@example.test",
                    "pm-1",
                    provider_events.UNMATCHED,
                    None,
                    None,
                    "smtp;550 5.1.1 no such user",
                    {},
                )
            ],
        )
    assert "1 provider event matched no message" in client.get("/").text
    page = client.get("/providers/events").text
    assert "stranger@example.test" in page and "550 5.1.1 no such user" in page
