"""The JSON API under /v1, each request authenticated as one account by its API key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from postwarden import errors
from postwarden.domain import addresses
from postwarden.intake import accept, schemas
from postwarden.settings import Settings
from postwarden.store import accounts, contacts, db, queries, recorder, suppression
from postwarden.store.accounts import Account
from postwarden.web import schemas as out
from postwarden.web.groupcommit import GroupCommit

MAX_ID = 2**63 - 1
"""The largest id either database holds (a signed 64-bit integer): larger ones are refused
as invalid before a query could overflow."""
Id = Annotated[int, Path(ge=1, le=MAX_ID)]

router = APIRouter(prefix="/v1")
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")


class Unauthorized(errors.PostwardenError):
    """A valid API key is required: Authorization: Bearer <key>."""


async def _settings(request: Request) -> Settings:  # async: no thread hop to read a field
    return request.app.state.settings  # type: ignore[no-any-return]


def _conn(request: Request) -> Iterator[Connection]:
    """One transaction per request: committed on success, rolled back on any refusal."""
    with request.app.state.engine.connect() as conn:
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


def _read_conn(request: Request) -> Iterator[Connection]:
    """A connection for requests that only read (no write lock on SQLite)."""
    with db.reader(request.app.state.engine).connect() as conn:
        yield conn


def _authenticate(request: Request, key: str) -> Account | None:
    with db.reader(request.app.state.engine).connect() as conn:
        return accounts.authenticate_cached(conn, key)


async def _account(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Account:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized()
    account = accounts.cached(credentials.credentials)  # no thread, no query on a hit
    if account is None:
        account = await run_in_threadpool(_authenticate, request, credentials.credentials)
    if account is None:
        raise _unauthorized("the API key is unknown or revoked")
    return account


def _unauthorized(message: str | None = None) -> HTTPException:
    return HTTPException(
        401, message or Unauthorized().message, headers={"WWW-Authenticate": "Bearer"}
    )


AccountDep = Annotated[Account, Depends(_account)]
ConnDep = Annotated[Connection, Depends(_conn)]
ReadConnDep = Annotated[Connection, Depends(_read_conn)]
SettingsDep = Annotated[Settings, Depends(_settings)]


def _limits(settings: Settings) -> accept.Limits:
    return accept.Limits.from_settings(settings)


def _policy(settings: Settings) -> suppression.Policy:
    return suppression.Policy(settings.soft_bounce_limit, settings.soft_bounce_days)


MessagePage = out.MessagePage


@router.post(
    "/messages",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.Accepted,
    tags=["messages"],
    summary="Send one email",
)
async def send_message(
    body: schemas.MessageIn, account: AccountDep, request: Request
) -> schemas.Accepted:
    return await _accept_message(request.app.state, account, body)  # type: ignore[return-value]


async def _accept_message(state: Any, account: Account, body: schemas.MessageIn) -> Response:
    """Store one message through the app's group commit, wake the dispatcher, answer 202."""
    accepted = await _message_intake(state).submit((account, body))
    state.wake()
    return Response(
        b'{"id":%d,"status":"%s"}' % (accepted.id, accepted.status.encode()),
        status.HTTP_202_ACCEPTED,
        media_type="application/json",
    )


MessageIntake = GroupCommit[tuple[Account, schemas.MessageIn], schemas.Accepted]


def _message_intake(state: Any) -> MessageIntake:
    """The app's group commit for single messages: under load, the requests that arrive while
    one transaction is being written are stored together by the next (``accept.submit_many``)."""
    writer: MessageIntake | None = getattr(state, "message_intake", None)
    if writer is None:
        engine, limits = state.engine, _limits(state.settings)

        def write(
            items: list[tuple[Account, schemas.MessageIn]],
        ) -> list[schemas.Accepted | Exception]:
            with engine.begin() as conn:
                return list(accept.submit_many(conn, items, limits))

        writer = state.message_intake = GroupCommit(write)
    return writer


class MessageFastPath:
    """``POST /v1/messages``, the hot endpoint, without FastAPI's per-request machinery
    (dependencies, middleware layers: about 150 of its 185 µs before any database work).

    Only the plain case is taken here: a JSON body within the size limit, an API key
    authenticated in the last few seconds (:func:`accounts.cached`), a body that validates.
    Anything else goes on to the app with its body, so refusals, their wording and the API
    documentation stay FastAPI's. The same model validates the body and
    :func:`_accept_message` stores it, as the route does."""

    def __init__(self, app: ASGIApp, state: Any, limit: int) -> None:
        self.app = app
        self.state = state
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != "/v1/messages"
            or scope.get("root_path")
        ):
            return await self.app(scope, receive, send)
        account = None
        json_body = False
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                account = accounts.cached(value[7:].decode("latin-1").strip())
            elif name == b"content-type":
                json_body = value.split(b";")[0].strip().lower() == b"application/json"
        if account is None or not json_body:
            return await self.app(scope, receive, send)
        chunks: list[bytes] = []
        size = 0
        more = True
        while more and size <= self.limit:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if size <= self.limit:
            try:
                parsed = schemas.MessageIn.model_validate(json.loads(body))
            except (ValueError, ValidationError, RecursionError):
                pass  # FastAPI words the refusal (RecursionError: JSON nested too deep)
            else:
                try:
                    response = await _accept_message(self.state, account, parsed)
                except errors.PostwardenError as exc:
                    response = error_response(exc)
                except UnicodeEncodeError as exc:
                    response = unstorable_response(exc)
                return await response(scope, receive, send)
        return await self.app(scope, _replay(body, more, receive), send)


def _replay(body: bytes, more: bool, receive: Receive) -> Receive:
    """A ``receive`` that hands over what was read already, then the rest (if ``more``)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay


_STATUS = {
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.InvalidTransition: 409,
    errors.InvalidInput: 422,
}


def status_of(exc: errors.PostwardenError) -> int:
    """The HTTP status code of a refusal (400 by default)."""
    return next((c for cls, c in _STATUS.items() if isinstance(exc, cls)), 400)


def error_response(exc: errors.PostwardenError) -> JSONResponse:
    """The JSON answer to a refusal: ``{"detail": ...}`` with its status code."""
    return JSONResponse({"detail": exc.message}, status_of(exc))


def unstorable(exc: UnicodeEncodeError) -> str:
    """Words for text the database cannot store: JSON can carry lone surrogates (``\\ud800``),
    which are not characters and have no UTF-8 form."""
    bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else ""
    codes = ", ".join(f"U+{ord(c):04X}" for c in bad[:3]) or "a character"
    return f"the text holds {codes}, a lone surrogate, which is not a character: send valid Unicode"


def unstorable_response(exc: UnicodeEncodeError) -> JSONResponse:
    """422 for text that reached the database unstorable (nothing of the request is stored)."""
    return JSONResponse({"detail": unstorable(exc)}, 422)


@router.get(
    "/messages", response_model=MessagePage, tags=["messages"], summary="The mail log, newest first"
)
def list_messages(
    account: AccountDep,
    conn: ReadConnDep,
    status_: Annotated[
        list[str] | None, Query(alias="status", description="repeat or comma-separate")
    ] = None,
    undelivered: bool = False,
    address: str | None = Query(None, description="exact address, or @domain"),
    broadcast: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    category: str | None = None,
    channel: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> MessagePage:
    statuses = [s for value in status_ or () for s in value.split(",") if s]
    page = queries.mail_log(
        conn,
        account.id,
        queries.LogFilter(
            statuses, undelivered, address, broadcast, category, channel, since, until
        ),
        cursor=cursor,
        limit=limit,
    )
    return MessagePage.model_validate({"items": page.items, "next_cursor": page.next_cursor})


@router.get(
    "/messages/{message_id}",
    response_model=out.Message,
    tags=["messages"],
    summary="One message: status, reason, timeline, attempts",
    responses=out.refused(404),
)
def get_message(message_id: Id, account: AccountDep, conn: ReadConnDep) -> dict[str, Any]:
    return queries.message_detail(conn, account.id, message_id)


@router.post(
    "/messages/{message_id}/cancel",
    response_model=schemas.Accepted,
    tags=["messages"],
    summary="Cancel a pending message (409 once it is no longer pending)",
    responses=out.refused(404, 409),
)
def cancel_message(
    message_id: Id, account: AccountDep, conn: ConnDep, settings: SettingsDep
) -> schemas.Accepted:
    outcome = recorder.cancel(conn, account.id, message_id, actor="api", policy=_policy(settings))
    return schemas.Accepted(id=message_id, status=outcome.after.value)


@router.post(
    "/messages/{message_id}/resend",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.Accepted,
    tags=["messages"],
    summary="Send again, optionally to a corrected address, as a new linked message",
    responses=out.refused(404, 409),
)
def resend_message(
    message_id: Id,
    account: AccountDep,
    conn: ConnDep,
    request: Request,
    body: schemas.ResendIn | None = None,
) -> schemas.Accepted:
    accepted = accept.resend(conn, account, message_id, body.to if body else None)
    suppression.audit(
        conn, account.id, "api", "message.resend", str(message_id), new_id=accepted.id
    )
    conn.commit()
    request.app.state.wake()
    return accepted


@router.post(
    "/broadcasts",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.BroadcastAccepted,
    tags=["broadcasts"],
    summary="One content to many recipients; intake decisions are counted at once",
)
def send_broadcast(
    body: schemas.BroadcastIn,
    account: AccountDep,
    conn: ConnDep,
    settings: SettingsDep,
    request: Request,
) -> schemas.BroadcastAccepted:
    accepted = accept.submit_broadcast(conn, account, body, _limits(settings))
    conn.commit()
    request.app.state.wake()
    return accepted


@router.get(
    "/broadcasts/{broadcast_id}",
    response_model=out.Broadcast,
    tags=["broadcasts"],
    summary="A broadcast and its counts per status",
    responses=out.refused(404),
)
def get_broadcast(broadcast_id: Id, account: AccountDep, conn: ReadConnDep) -> dict[str, Any]:
    return queries.broadcast_detail(conn, account.id, broadcast_id)


@router.post(
    "/contacts",
    status_code=status.HTTP_201_CREATED,
    response_model=out.Contact,
    tags=["contacts"],
    summary="Add a contact",
)
def create_contact(body: schemas.ContactIn, account: AccountDep, conn: ConnDep) -> dict[str, Any]:
    email = addresses.check(body.email) if body.email else None
    contact_id = contacts.create(
        conn,
        account.id,
        name=body.name,
        email=email,
        phone=body.phone,
        preferences=body.preferences,
    )
    return {
        "id": contact_id,
        "name": body.name,
        "email": email,
        "phone": body.phone,
        "preferences": body.preferences,
    }


@router.get(
    "/contacts/{contact_id}",
    response_model=out.Contact,
    tags=["contacts"],
    summary="One contact",
    responses=out.refused(404),
)
def get_contact(contact_id: Id, account: AccountDep, conn: ReadConnDep) -> dict[str, Any]:
    return contacts.get(conn, account.id, contact_id)


@router.get(
    "/suppressions",
    response_model=out.SuppressionList,
    tags=["suppressions"],
    summary="The suppression list (bounced addresses)",
)
def list_suppressions(
    account: AccountDep,
    conn: ReadConnDep,
    search: str = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> dict[str, Any]:
    rows = suppression.list_entries(conn, account.id, search=search, limit=limit, offset=offset)
    return {"items": [dict(r._mapping) for r in rows]}  # type: ignore[attr-defined]


@router.post(
    "/suppressions",
    status_code=status.HTTP_201_CREATED,
    response_model=out.SuppressionAdded,
    tags=["suppressions"],
    summary="Suppress an address by hand",
)
def add_suppression(body: schemas.AddressIn, account: AccountDep, conn: ConnDep) -> dict[str, Any]:
    address = addresses.check(body.address)
    added = suppression.suppress(
        conn,
        account.id,
        address,
        reason=suppression.MANUAL,
        detail=body.note,
        source="api",
        category=body.category,
        actor="api",
    )
    return {"address": address, "category": body.category, "added": added}


@router.delete(
    "/suppressions/{address}",
    response_model=out.SuppressionRemoved,
    tags=["suppressions"],
    summary="Mark the address as valid: remove it, and list what was dropped for it",
    responses=out.refused(404),
)
def remove_suppression(
    address: str, account: AccountDep, conn: ConnDep, category: str | None = None
) -> dict[str, Any]:
    removed = suppression.remove(conn, account.id, address, actor="api", category=category)
    return {
        "address": address,
        "removed": removed,
        "dropped_messages": suppression.dropped_since_removal(conn, account.id, address),
    }


@router.get("/blocks", response_model=out.BlockList, tags=["blocks"], summary="The block list")
def list_blocks(account: AccountDep, conn: ReadConnDep) -> dict[str, Any]:
    return {"items": [dict(r._mapping) for r in suppression.list_blocks(conn, account.id)]}  # type: ignore[attr-defined]


@router.post(
    "/blocks",
    status_code=status.HTTP_201_CREATED,
    response_model=out.BlockAdded,
    tags=["blocks"],
    summary="Block an address, or a domain written @domain",
)
def add_block(body: schemas.AddressIn, account: AccountDep, conn: ConnDep) -> dict[str, Any]:
    added = suppression.block(conn, account.id, body.address, actor="api", note=body.note)
    return {"pattern": body.address.strip().lower(), "added": added}


@router.delete(
    "/blocks/{pattern}",
    response_model=out.BlockRemoved,
    tags=["blocks"],
    summary="Remove an entry from the block list",
    responses=out.refused(404),
)
def remove_block(pattern: str, account: AccountDep, conn: ConnDep) -> dict[str, Any]:
    suppression.unblock(conn, account.id, pattern, actor="api")
    return {"pattern": pattern, "removed": True}
