"""The tracking routes recipients' mail clients hit, and the engagement API.

Served on the tracking hostname (``POSTWARDEN_TRACKING_BASE_URL`` is what goes into mail):

- ``GET /t/o/{token}``: the open pixel. Always the same 43-byte GIF, whatever the token:
  a forged or unknown one is answered exactly like a valid one (and writes nothing).
- ``GET|HEAD /t/c/{token}``: 302 to the link of that message the token names; HEAD (link
  checkers) is recorded as a machine click and redirected all the same. An unknown, forged,
  truncated or out-of-range token gets the same small 404 page.
- ``GET /t/u/{token}``: a confirmation page with a button; a GET never unsubscribes.
- ``POST /t/u/{token}``: RFC 8058 one-click unsubscribe (``List-Unsubscribe=One-Click``): no
  cookie, no CSRF token (mail providers cannot send one); idempotent.

These routes are left out of the OpenAPI schema: they are for mail clients, not API users.
The ``/v1`` part: ``PATCH /v1/account`` (tracking on or off) and ``GET /v1/reports/engagement``.
"""

from __future__ import annotations

import html
import logging
from collections import OrderedDict
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from postwarden.domain import clock, tokens
from postwarden.inbound import tracking
from postwarden.settings import Settings
from postwarden.store import accounts, db, queries, suppression
from postwarden.web import schemas
from postwarden.web.api import AccountDep, ConnDep, ReadConnDep
from postwarden.web.groupcommit import GroupCommit

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)
api_router = APIRouter(prefix="/v1")

_NO_STORE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
    "X-Robots-Tag": "noindex, nofollow",
    "Referrer-Policy": "no-referrer",
}


class _State:
    """Per app: the link cache and the recently recorded opens (a reload storm from one
    client within a minute is a known duplicate: answered without touching the database)."""

    def __init__(self, app: FastAPI) -> None:
        self.engine: Engine = app.state.engine
        self.settings: Settings = app.state.settings
        self.secret: bytes = app.state.secret
        self.policy = suppression.Policy(
            self.settings.soft_bounce_limit, self.settings.soft_bounce_days
        )
        self.links = tracking.LinkCache()
        self.opens: GroupCommit[tracking.OpenHit, bool] = GroupCommit(self._write_opens)
        self.recent: OrderedDict[tuple[Any, ...], None] = OrderedDict()

    def seen(self, key: tuple[Any, ...]) -> bool:
        if key in self.recent:
            return True
        self.recent[key] = None
        if len(self.recent) > 50_000:
            self.recent.popitem(last=False)
        return False

    def forget(self, key: tuple[Any, ...]) -> None:
        self.recent.pop(key, None)

    def _write_opens(self, hits: list[tracking.OpenHit]) -> list[bool | Exception]:
        with self.engine.begin() as conn:
            return list(tracking.record_opens(conn, self.secret, hits, policy=self.policy))


def _state(request: Request) -> _State:
    app = request.app
    state = getattr(app.state, "tracking", None)
    if state is None:
        state = app.state.tracking = _State(app)
    return state  # type: ignore[no-any-return]


def _client(request: Request) -> tuple[str, str]:
    ip = request.client.host if request.client else ""
    return request.headers.get("user-agent", ""), ip


def _pixel() -> Response:
    return Response(tracking.PIXEL, media_type="image/gif", headers=_NO_STORE)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    document = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        '<meta name=robots content="noindex,nofollow">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;"
        "padding:0 1rem;color:#222}button{font:inherit;padding:.5rem 1.2rem;cursor:pointer}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(document, status, headers=_NO_STORE)


def _not_found() -> HTMLResponse:
    return _page(
        "Link not found",
        "<p>This link is not valid, or it has expired.</p>",
        404,
    )


@router.get("/t/o/{token:path}")
async def open_pixel(token: str, request: Request) -> Response:
    state = _state(request)
    found = tokens.verify(state.secret, "o", token)  # no database for a forged token
    if found is None:
        return _pixel()
    user_agent, ip = _client(request)
    now = clock.now()
    key = (found[0], now.timestamp() // tracking.OPEN_BUCKET_SECONDS, user_agent, ip)
    if state.seen(key):
        return _pixel()
    try:
        await state.opens.submit(tracking.OpenHit(token, user_agent, ip, now))
    except Exception:  # the image is answered whatever happens; the next fetch retries
        state.forget(key)
        log.exception("recording an open failed")
    return _pixel()


@router.api_route("/t/c/{token:path}", methods=["GET", "HEAD"])
async def click(token: str, request: Request) -> Response:
    state = _state(request)
    if tokens.verify(state.secret, "c", token) is None:
        return _not_found()
    user_agent, ip = _client(request)

    def write() -> str | None:
        with state.engine.begin() as conn:
            return tracking.record_click(
                conn,
                state.secret,
                token,
                user_agent=user_agent,
                ip=ip,
                method=request.method,
                policy=state.policy,
                base_url=state.settings.tracking_base_url,
                cache=state.links,
            )

    url = await run_in_threadpool(write)
    if url is None:
        return _not_found()
    return RedirectResponse(url, 302, headers=_NO_STORE)


_CONFIRM = (
    "<p>Do you want to stop receiving these emails?</p>"
    '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
    '<button type="submit">Unsubscribe</button></form>'
)


@router.get("/t/u/{token:path}")
async def unsubscribe_page(token: str, request: Request) -> Response:
    state = _state(request)
    if tokens.verify(state.secret, "u", token) is None:
        return _not_found()

    def read() -> tuple[int, str] | None:
        with db.reader(state.engine).connect() as conn:
            return tracking.unsubscribable(
                conn, state.secret, token, transactional=state.settings.transactional
            )

    if await run_in_threadpool(read) is None:
        return _not_found()
    return _page("Unsubscribe", _CONFIRM)


@router.post("/t/u/{token:path}")
async def unsubscribe(token: str, request: Request) -> Response:
    state = _state(request)
    if tokens.verify(state.secret, "u", token) is None:
        return _not_found()
    await request.body()  # "List-Unsubscribe=One-Click" (RFC 8058) or the page's own form
    user_agent, ip = _client(request)

    def write() -> bool:
        with state.engine.begin() as conn:
            return tracking.unsubscribe(
                conn,
                state.secret,
                token,
                policy=state.policy,
                transactional=state.settings.transactional,
                user_agent=user_agent,
                ip=ip,
            )

    if not await run_in_threadpool(write):
        return _not_found()
    return _page("You are unsubscribed", "<p>You will no longer receive these emails.</p>")


# -- the API side ----------------------------------------------------------------------------


class AccountPatch(BaseModel):
    tracking: bool


@api_router.patch(
    "/account",
    response_model=schemas.AccountSettings,
    tags=["account"],
    summary="Account settings: engagement tracking on or off",
)
def patch_account(body: AccountPatch, account: AccountDep, conn: ConnDep) -> dict[str, Any]:
    accounts.set_tracking(conn, account.id, body.tracking)
    suppression.audit(
        conn, account.id, "api", "account.tracking", account.name, tracking=body.tracking
    )
    conn.commit()
    accounts.forget_keys()  # the cached Account carries the tracking flag
    return {"name": account.name, "tracking": body.tracking}


@api_router.get(
    "/reports/engagement",
    response_model=schemas.EngagementReport,
    tags=["reports"],
    summary="Open and click rates, human and all, per broadcast, category or day",
)
def engagement_report(
    account: AccountDep,
    conn: ReadConnDep,
    group: Annotated[Literal["broadcast", "category", "day"], Query()] = "broadcast",
    since: date | None = None,
    until: date | None = None,
) -> dict[str, Any]:
    return queries.engagement_report(conn, account.id, group, since, until)


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.include_router(api_router)
