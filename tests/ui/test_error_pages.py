"""Errors in the browser are pages with a way back, not JSON (issue 15.8); what an operator
typed into a form when the session had ended is kept and filled in again after signing in."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from test_pages import PASSWORD, _bounce, _client, _send, _sign_in, _token, admin, signed_in  # noqa: F401

from postwarden.settings import Settings
from postwarden.store import accounts
from postwarden.store import tables as t

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def _is_page(response: object, code: int, *phrases: str) -> str:
    text: str = response.text  # type: ignore[attr-defined]
    assert response.status_code == code, text  # type: ignore[attr-defined]
    assert response.headers["content-type"].startswith("text/html"), text  # type: ignore[attr-defined]
    assert '<main id="main"' in text and 'href="/"' in text  # the site's page, a way back
    for phrase in phrases:
        assert phrase in text, (phrase, text)
    return text


@pytest.mark.parametrize(
    ("path", "code", "phrase"),
    [
        ("/no/such/page", 404, "There is no page at this address"),
        ("/messages/abc", 404, "There is no page at this address"),
        (f"/messages/{2**63}", 404, "There is no page at this address"),
        (f"/broadcasts/{2**64}", 404, "There is no page at this address"),
        ("/messages/1/resend", 405, "a form&#39;s button sends its form"),
        ("/undelivered?until=9999-12-31", 422, "the last day a report can end is 9999-12-30"),
        ("/messages?until=9999-12-31", 422, "the last day a report can end is 9999-12-30"),
        (f"/messages?broadcast={2**63}", 422, "no such number here"),
        ("/messages.csv?since=nonsense", 422, "not a date"),
        ("/suppressions/remove", 422, "address: Field required"),
    ],
)
def test_errors_are_pages_for_a_browser(
    signed_in: TestClient,  # noqa: F811
    path: str,
    code: int,
    phrase: str,
) -> None:
    client = signed_in
    _is_page(client.get(path, headers=HTML), code, phrase)


def test_the_api_and_non_browsers_keep_json_errors(settings: Settings, engine: Engine) -> None:
    client = _client(settings, engine)
    assert client.get("/no/such/page").json() == {"detail": "Not Found"}  # curl: */*
    assert client.get("/v1/nothing", headers=HTML).json() == {"detail": "Not Found"}
    response = client.get("/v1/messages/abc", headers=HTML | {"Authorization": "Bearer x"})
    assert response.status_code in (401, 422) and "detail" in response.json()


def test_a_stale_form_is_a_page_and_its_input_is_kept(
    signed_in: TestClient,  # noqa: F811
) -> None:
    """Signed in, but the form's token is from before (another tab, an older sign-in)."""
    client = signed_in
    response = client.post(
        "/suppressions",
        data={"csrf": "from-an-old-page", "address": "typed@example.test", "note": "asked"},
        headers=HTML | {"Referer": "http://testserver/suppressions"},
    )
    _is_page(response, 403, "This form was out of date", 'href="/suppressions"')
    page = client.get("/suppressions", headers=HTML).text
    assert 'value="typed@example.test"' in page and 'value="asked"' in page
    assert "No address is suppressed" in page  # nothing was done
    assert 'value="typed@example.test"' not in client.get("/suppressions").text  # once only


def test_the_resend_address_survives_signing_in_again(
    settings: Settings,
    engine: Engine,
    admin: accounts.Account,  # noqa: F811
) -> None:
    with engine.begin() as conn:
        message_id = _send(conn, admin, "old@example.test")
        _bounce(conn, message_id)
        messages = conn.scalar(select(func.count()).select_from(t.messages))
    client = _client(settings, engine)
    token = _sign_in(client)
    client.get(f"/messages/{message_id}")
    client.cookies.clear()  # 12 hours later the browser has dropped the cookie
    response = client.post(
        f"/messages/{message_id}/resend",
        data={"csrf": token, "to": "new@example.test"},
        headers=HTML | {"Referer": f"http://testserver/messages/{message_id}"},
    )
    text = _is_page(response, 401, "Your session has ended", "what you typed is kept")
    assert f'name="next" value="/messages/{message_id}"' in text
    back_in = client.post(
        "/login",
        data={
            "csrf": _token(text),
            "email": "admin@acme.test",
            "password": PASSWORD,
            "next": f"/messages/{message_id}",
        },
        headers=HTML,
        follow_redirects=False,
    )
    assert back_in.status_code == 303
    assert back_in.headers["location"] == f"/messages/{message_id}"
    page = client.get(f"/messages/{message_id}", headers=HTML).text
    assert re.search(r'id="resend-to"[^>]*value="new@example.test"', page), page
    assert "filled in again below: check it, then send it" in page
    with engine.connect() as conn:  # filled in, never sent by itself
        assert conn.scalar(select(func.count()).select_from(t.messages)) == messages


def test_an_error_page_links_back_to_where_the_visitor_was(
    signed_in: TestClient,  # noqa: F811
) -> None:
    client = signed_in
    response = client.get(
        "/messages/abc", headers=HTML | {"Referer": "http://testserver/undelivered?status=bounced"}
    )
    assert 'href="/undelivered?status=bounced"' in _is_page(response, 404)
    elsewhere = client.get("/messages/abc", headers=HTML | {"Referer": "https://evil.test/x"})
    assert "evil.test" not in _is_page(elsewhere, 404)


def test_a_fault_is_a_page_too(
    settings: Settings,
    engine: Engine,
    admin: accounts.Account,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from postwarden.store import queries

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the database went away")

    client = TestClient(_client(settings, engine).app, raise_server_exceptions=False)
    _sign_in(client)
    monkeypatch.setattr(queries, "suppression_count", broken)
    response = client.get("/suppressions", headers=HTML)
    assert response.status_code == 500
    assert "Something went wrong on Postwarden" in response.text
    assert "the database went away" not in response.text  # no internals shown
    assert response.headers["x-frame-options"] == "DENY"
    api = client.get("/suppressions")
    assert api.status_code == 500 and "in its log" in api.json()["detail"]
