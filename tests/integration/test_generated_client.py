"""A client generated from /openapi.json (openapi-python-client, as a host application would):
it sends a message and reads it back as typed objects; a webhook Postwarden really sent is
valid against the spec's own ``webhooks`` schema for its type."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from postwarden.domain.status import Kind
from postwarden.settings import Settings
from postwarden.store import accounts, recorder, suppression, webhooks
from postwarden.store import tables as t
from postwarden.web.app import create_app

GENERATOR = Path(sys.executable).with_name("openapi-python-client")
ARGS = ("--meta", "none", "--output-path", "pwclient")


@pytest.fixture
def generated(tmp_path: Path, settings: Settings, engine: Engine) -> Any:
    with TestClient(create_app(settings, engine, b"secret")) as http:
        spec = http.get("/openapi.json").json()
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    subprocess.run(
        [str(GENERATOR), "generate", "--path", "spec.json", *ARGS],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=120,
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield spec, importlib.import_module("pwclient")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n == "pwclient" or n.startswith("pwclient.")]:
            del sys.modules[name]


def test_a_generated_client_sends_and_reads_typed_objects(
    generated: Any, settings: Settings, engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    spec, pwclient = generated
    send_message = importlib.import_module("pwclient.api.messages.send_message")
    get_message = importlib.import_module("pwclient.api.messages.get_message")
    models = importlib.import_module("pwclient.models")
    operations = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {"send_message", "get_message", "create_webhook_endpoint"} <= operations
    assert all("_v1_" not in o for o in operations), "framework default ids are gone"

    with TestClient(create_app(settings, engine, b"secret")) as http:
        # The generated client over the app in this process (TestClient is an httpx.Client).
        client = pwclient.AuthenticatedClient(base_url="http://testserver", token=account_key[1])
        http.headers["Authorization"] = f"Bearer {account_key[1]}"
        client.set_httpx_client(http)
        body = models.MessageIn.from_dict(
            {"from": "app@acme.test", "to": "bob@example.test", "subject": "Hi", "text": "t"}
        )
        accepted = send_message.sync(client=client, body=body)
        assert isinstance(accepted, models.Accepted) and accepted.status == "pending"
        with engine.begin() as conn:
            recorder.record(
                conn,
                [recorder.Fact(accepted.id, Kind.DELIVERED, "smtp", code="2.0.0")],
                policy=suppression.Policy(),
            )
        read = get_message.sync(accepted.id, client=client)
    assert isinstance(read, models.Message)
    assert (read.to, read.status, read.from_) == ("bob@example.test", "delivered", "app@acme.test")
    (event,) = read.events
    assert isinstance(event, models.Event) and (event.kind, event.code) == ("delivered", "2.0.0")
    assert isinstance(read.explanation, models.Explanation)


def test_a_webhook_sent_is_valid_against_the_spec(
    generated: Any, engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    spec, _client = generated
    assert set(spec["webhooks"]) == set(webhooks.EVENT_TYPES)
    account = account_key[0]
    with engine.begin() as conn:
        webhooks.create_endpoint(conn, account.id, "https://hooks.example.test/x")
        mid = conn.scalar(
            t.messages.insert()
            .values(
                account_id=account.id,
                content_id=conn.scalar(
                    t.contents.insert()
                    .values(
                        account_id=account.id,
                        from_addr="a@acme.test",
                        subject="s",
                        text="t",
                        headers={},
                        created_at=account_created(conn, account.id),
                    )
                    .returning(t.contents.c.id)
                ),
                to_addr="gone@example.test",
                status="pending",
                flags=[],
                metadata={"order": 7},
                created_at=account_created(conn, account.id),
                updated_at=account_created(conn, account.id),
            )
            .returning(t.messages.c.id)
        )
        recorder.record(
            conn,
            [
                recorder.Fact(mid, Kind.DELIVERED, "smtp"),
                recorder.Fact(mid, Kind.CLICKED, "tracking", data={"machine": True, "link": 0}),
                recorder.Fact(mid, Kind.BOUNCED, "dsn", reason="userunknown", hard=True),
            ],
            policy=suppression.Policy(),
        )
        bodies = list(
            conn.execute(select(t.webhook_deliveries.c.event_type, t.webhook_deliveries.c.payload))
        )
    assert {e for e, _ in bodies} >= {
        webhooks.STATUS_CHANGED,
        webhooks.CLICKED,
        webhooks.BOUNCED_AFTER_DELIVERY,
        webhooks.SUPPRESSION_ADDED,
    }
    for event_type, payload in bodies:
        operation = spec["webhooks"][event_type]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        document = {**schema, "components": spec["components"]}
        jsonschema.Draft202012Validator(document).validate(json.loads(payload))
    broken = json.loads(bodies[0][1])
    del broken["data"]["previous_status"]
    operation = spec["webhooks"][bodies[0][0]]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator({**schema, "components": spec["components"]}).validate(
            broken
        )


def account_created(conn: Any, account_id: int) -> Any:
    return conn.scalar(select(t.accounts.c.created_at).where(t.accounts.c.id == account_id))
