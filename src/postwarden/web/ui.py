"""The admin web UI: server-rendered pages over the same reads and actions as the JSON API.

Sessions are Starlette's signed cookie (itsdangerous), HttpOnly and SameSite=Lax, Secure when
the request came over https; a signed-in cookie names a session kept on the server
(:mod:`postwarden.store.sessions`), so signing out ends it for good. Every visitor's session
carries a random CSRF token; every form posts it back, and a POST without the matching token,
or from a session that has ended, does nothing: it gets a page saying so, and what was typed
is kept and filled in again once the operator is back (never sent by itself).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import math
import secrets
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from postwarden import errors
from postwarden.domain import addresses, clock
from postwarden.domain.status import UNDELIVERED, Status
from postwarden.intake import accept
from postwarden.store import (
    accounts,
    db,
    inbound_queue,
    provider_events,
    queries,
    recorder,
    sessions,
    suppression,
    users,
    webhooks,
)
from postwarden.web import api

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)

COOKIE = "pw_session"
SESSION_SECONDS = int(sessions.LIFETIME.total_seconds())
PAGE = 50
CHART_DAYS = 7
CSV_MAX_ROWS = 1_000_000

STATUS_TONE = {
    "pending": "neutral",
    "sending": "info",
    "deferred": "warn",
    "sent": "info",
    "delivered": "good",
    "opened": "good",
    "clicked": "good",
    "bounced": "bad",
    "failed": "bad",
    "dropped": "held",
    "blocked": "held",
    "no_channel": "held",
    "duplicate": "muted",
    "cancelled": "muted",
}
"""One colour per kind of outcome, the same on every page (see static/ui.css)."""

STATUSES = [s.value for s in Status]
UNDELIVERED_STATUSES = [s.value for s in Status if s in UNDELIVERED]
CHANNELS = ["email", "sms"]


def install(app: FastAPI) -> None:
    """Add the UI's pages, its static files and its sessions to the app.

    Sessions are Starlette's signed cookie (itsdangerous), keyed by a key derived from the
    app's secret: HttpOnly, SameSite=Lax, 12 hours, Secure over https."""
    secret: bytes = app.state.secret
    key = hmac.new(secret, b"postwarden web ui session", hashlib.sha256).hexdigest()
    app.add_middleware(SessionsByScheme, secret_key=key)
    app.add_exception_handler(FormRefused, _form_refused)  # type: ignore[arg-type]
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")


class SessionsByScheme:
    """Starlette's session cookie, marked Secure when this request came over https.

    The scheme is the request's own, or what a trusted proxy said (``X-Forwarded-Proto``, see
    ``POSTWARDEN_TRUSTED_PROXIES``): a cookie set over https is never sent over plain http,
    and a UI served over plain http (a laptop, a test) still gets one."""

    def __init__(self, app: ASGIApp, secret_key: str) -> None:
        options: dict[str, Any] = {
            "secret_key": secret_key,
            "session_cookie": COOKIE,
            "max_age": SESSION_SECONDS,
            "same_site": "lax",
        }
        self.plain = SessionMiddleware(app, **options)
        self.secure = SessionMiddleware(app, https_only=True, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chosen = self.secure if scope.get("scheme") in ("https", "wss") else self.plain
        await chosen(scope, receive, send)


# region sessions and CSRF


def _set(request: Request, **values: Any) -> None:
    for name, value in values.items():
        if value is None:
            request.session.pop(name, None)
        else:
            request.session[name] = value


def _csrf(request: Request) -> str:
    session = request.session
    if "csrf" not in session:
        _set(request, csrf=secrets.token_urlsafe(24))
    return session["csrf"]  # type: ignore[no-any-return]


def _flash(request: Request, text: str, kind: str = "ok") -> None:
    _set(request, flash={"text": text, "kind": kind})


def _token_ok(request: Request, form: FormData) -> bool:
    sent = form.get("csrf")
    expected = request.session.get("csrf")
    return isinstance(sent, str) and bool(expected) and hmac.compare_digest(sent, expected)


def _session_user(request: Request) -> users.User | None:
    """The user of this cookie's server-side session, if it is still open."""
    token = request.session.get("sid")
    if not isinstance(token, str):
        return None
    with db.reader(request.app.state.engine).connect() as conn:
        return sessions.user(conn, token)


class FormRefused(Exception):
    """A form posted from a session that has ended, or with an out-of-date token: nothing
    was done; what was typed is kept in the session (``draft``) for the page it came from."""

    def __init__(self, signed_in: bool, page: str) -> None:
        super().__init__(page)
        self.signed_in = signed_in
        self.page = page


DRAFT_FIELD_CHARS = 500
_NOT_KEPT = ("csrf", "password", "back", "next")


def _came_from(request: Request) -> str:
    """The page this request came from (its Referer) if that is on this site, else ""."""
    referer = urlsplit(request.headers.get("referer", ""))
    if referer.netloc != request.url.netloc or not referer.path:
        return ""
    return _local(referer.path + (f"?{referer.query}" if referer.query else ""), "")


def _form_page(request: Request, form: FormData) -> str:
    """The page the form was on: its ``back`` field, or where the request came from."""
    back = form.get("back")
    if isinstance(back, str) and _local(back, ""):
        return back
    return _came_from(request) or "/"


def _keep_draft(request: Request, form: FormData, page: str) -> None:
    fields = {
        name: value[:DRAFT_FIELD_CHARS]
        for name, value in form.items()
        if isinstance(value, str) and value and name not in _NOT_KEPT
    }
    if fields:
        _set(request, draft={"page": page, "action": request.url.path, "fields": fields})


async def user_form(request: Request) -> FormData:
    """The posted form of a signed-in user whose CSRF token matches; otherwise
    :class:`FormRefused`, keeping what was typed."""
    form = await request.form()
    user = await run_in_threadpool(_session_user, request)
    if user is None or not _token_ok(request, form):
        page = _form_page(request, form)
        _keep_draft(request, form, page)
        raise FormRefused(user is not None, page)
    request.state.user = user
    return form


async def _posted(request: Request) -> FormData:
    return await request.form()


def _user(request: Request) -> users.User:
    """The signed-in user, or a redirect to the sign-in page."""
    user: users.User | None = getattr(request.state, "user", None) or _session_user(request)
    if user is None:
        if request.method != "GET":  # a form with no FormDep before its UserDep
            raise FormRefused(False, _came_from(request) or "/")
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(303, headers={"Location": "/login?" + urlencode({"next": target})})
    return user


UserDep = Annotated[users.User, Depends(_user)]
FormDep = Annotated[FormData, Depends(user_form)]


def _form_refused(request: Request, exc: FormRefused) -> Response:
    if not exc.signed_in:
        return _page(
            request,
            "login.html",
            None,
            401,
            next=exc.page,
            email="",
            notice=(
                "Your session has ended (you signed out, or signed in more than 12 hours "
                "ago), so that was not done. Sign in again: what you typed is kept and "
                "filled in again, to check and send."
            ),
        )
    return error_page(
        request,
        403,
        "This form was out of date (it was opened before your last sign-in), so it was not "
        "sent. What you typed is kept: go back to the page, check it and send it again.",
        back=exc.page,
    )


def _kept(request: Request) -> Callable[[str, str], str]:
    """``kept(action, field)`` for the templates: what was typed into that form before a
    sign-in, on the page it came from (once), else ""."""
    draft = request.session.get("draft")
    fields: Mapping[str, str] = {}
    action = None
    if isinstance(draft, dict) and urlsplit(str(draft.get("page"))).path == request.url.path:
        _set(request, draft=None)
        fields, action = draft.get("fields") or {}, draft.get("action")
    return lambda form, name: str(fields.get(name, "")) if form == action else ""


def _local(target: str | None, default: str = "/") -> str:
    """Only same-site paths are followed after sign-in or an action (no open redirect)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return default


# endregion
# region rendering helpers


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if isinstance(value, datetime) else ""


def _why(item: dict[str, Any]) -> str:
    """What hovering a status badge says: the reason and the remote server's words."""
    parts = []
    explained = queries.explain(item.get("reason"), item["status"])
    if item.get("reason"):
        parts.append(f"Reason: {item['reason']}")
    if item.get("detail"):
        parts.append(str(item["detail"]))
    if explained:
        parts.append(explained["explanation"])
    return " — ".join(parts)


templates.env.filters["when"] = _when
templates.env.globals["why"] = _why
templates.env.globals["tone"] = STATUS_TONE
templates.env.globals["label"] = lambda status: str(status).replace("_", " ")


def _page(
    request: Request,
    name: str,
    user: users.User | None,
    status_code: int = 200,
    **context: Any,
) -> Response:
    flash = request.session.get("flash")
    if flash:
        _set(request, flash=None)
    response = templates.TemplateResponse(
        request,
        name,
        {"user": user, "csrf": _csrf(request), "flash": flash, "kept": _kept(request), **context},
        status_code=status_code,
    )
    return response


NO_SUCH_NUMBER = (
    "There is no page at this address: message and broadcast numbers are whole numbers "
    "from 1, like /messages/42."
)
_ERRORS = {
    400: ("The request was not understood", "Go back and try again."),
    401: ("Sign in first", "This page is for signed-in operators."),
    403: ("Not allowed", "This action is not allowed from here."),
    404: (
        "Page not found",
        "There is no page at this address: the link may be wrong or out of date.",
    ),
    405: (
        "Not a page to open",
        "This address is where a form's button sends its form: go back to the page with the "
        "form and use it there.",
    ),
    413: ("Too large", "What was sent is larger than Postwarden accepts."),
    422: ("Not valid", "Some of what was asked for is not valid."),
    500: (
        "Something went wrong on Postwarden's side",
        "Nothing was lost by looking; the error is in the server's log. Try again, and if it "
        "keeps happening, tell whoever runs this Postwarden.",
    ),
}


def error_page(
    request: Request,
    status_code: int,
    text: str | None = None,
    headers: Mapping[str, str] | None = None,
    back: str | None = None,
) -> Response:
    """An error as a page with a way back, for a browser (the JSON API keeps JSON errors).

    It reads no session and no database, so it also serves when those are what failed."""
    title, default = _ERRORS.get(status_code, (HTTPStatus(status_code).phrase, ""))
    if back is None:
        back = _came_from(request)
        back = "" if urlsplit(back).path == request.url.path else back
    return templates.TemplateResponse(
        request,
        "error.html",
        {
            "user": None,
            "csrf": "",
            "flash": None,
            "title": title,
            "text": text or default,
            "back": back,
            "status": status_code,
        },
        status_code=status_code,
        headers=dict(headers or {}),
    )


def _redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


def _not_found(request: Request, user: users.User, what: str) -> Response:
    return _page(request, "not_found.html", user, 404, what=what)


def _day(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise errors.InvalidInput(f"not a date (YYYY-MM-DD): {value!r}") from exc


def _int(value: str | None) -> int | None:
    if not value:
        return None
    try:
        number = int(value)
    except ValueError as exc:
        raise errors.InvalidInput(f"not a number: {value!r}") from exc
    if not 1 <= number <= api.MAX_ID:
        raise errors.InvalidInput(f"no such number here: {value}")
    return number


def _log_filter(params: dict[str, str]) -> queries.LogFilter:
    since_day, until_day = _day(params.get("since")), _day(params.get("until"))
    since = queries.report_window(since_day, since_day)[0] if since_day else None
    until = queries.report_window(until_day, until_day)[1] if until_day else None
    status = params.get("status") or ""
    return queries.LogFilter(
        statuses=[status] if status else (),
        undelivered=params.get("undelivered") == "1",
        address=params.get("address") or None,
        broadcast_id=_int(params.get("broadcast")),
        category=params.get("category") or None,
        channel=params.get("channel") or None,
        since=since,
        until=until,
    )


def _with(params: dict[str, str], **changes: str | None) -> str:
    merged = {k: v for k, v in {**params, **changes}.items() if v}
    return "?" + urlencode(merged) if merged else ""


# endregion
# region sign-in


@router.get("/login")
def login_form(request: Request, next: str = "/") -> Response:
    return _page(request, "login.html", None, next=_local(next), email="")


def _client(request: Request) -> str:
    """The client's address (a trusted proxy's X-Forwarded-For already applied)."""
    return request.client.host if request.client else ""


def _wait(retry_at: datetime, seconds: int) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    return f"{retry_at:%H:%M} UTC (in {minutes} minute{'s' if minutes != 1 else ''})"


@router.post("/login")
def login(request: Request, form: Annotated[FormData, Depends(_posted)]) -> Response:
    email = str(form.get("email") or "")
    password = str(form.get("password") or "")
    target = _local(str(form.get("next") or "/"))
    if not _token_ok(request, form):
        return _page(
            request,
            "login.html",
            None,
            403,
            next=target,
            email=email,
            error="The sign-in form had been open too long. Sign in again.",
        )
    engine = request.app.state.engine
    outcome = users.sign_in(engine, email, password, _client(request))
    if isinstance(outcome, users.Refused):
        whose = "for this email address" if outcome.by == "email" else "from your network"
        seconds = max(1, math.ceil((outcome.retry_at - clock.now()).total_seconds()))
        response = _page(
            request,
            "login.html",
            None,
            429,
            next=target,
            email=email,
            error=(
                f"Too many wrong passwords {whose}: signing in is paused until "
                f"{_wait(outcome.retry_at, seconds)}. The password was not checked. If it is "
                "forgotten, ask whoever runs Postwarden to set a new one."
            ),
        )
        response.headers["Retry-After"] = str(seconds)
        return response
    if outcome is None:
        return _page(
            request,
            "login.html",
            None,
            401,
            next=target,
            email=email,
            error="The email address or the password is wrong.",
        )
    with engine.begin() as conn:
        previous = request.session.get("sid")
        if isinstance(previous, str):  # signing in again ends the session this cookie had
            sessions.revoke(conn, previous)
        token = sessions.start(conn, outcome.id)
    draft = request.session.get("draft")
    # A fresh session (and CSRF token) at sign-in: nothing set before it carries over but
    # what was typed into a form when the last session had ended.
    request.session.clear()
    _set(request, sid=token, csrf=secrets.token_urlsafe(24), draft=draft)
    if isinstance(draft, dict) and urlsplit(str(draft.get("page"))).path == urlsplit(target).path:
        _flash(
            request,
            "What you typed before signing in is filled in again below: check it, then send it.",
        )
    return _redirect(target)


@router.post("/logout")
def logout(request: Request, form: FormDep) -> Response:
    token = request.session.get("sid")
    if isinstance(token, str):
        with request.app.state.engine.begin() as conn:
            sessions.revoke(conn, token)
    request.session.clear()
    _set(request, csrf=secrets.token_urlsafe(24))
    _flash(request, "You are signed out.")
    return _redirect("/login")


# endregion
# region pages


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, user: UserDep, conn: api.ReadConnDep) -> Response:
    since, until = queries.report_window(None, None)
    undelivered = queries.count_undelivered(
        conn, user.account_id, queries.LogFilter(since=since, until=until)
    )
    days = queries.daily_counts(conn, user.account_id, days=CHART_DAYS)
    peak = max((sum(c.values()) for _, c in days), default=0)
    broadcasts = queries.recent_broadcasts(conn, user.account_id)
    engagement = queries.broadcast_engagement(conn, user.account_id, [b["id"] for b in broadcasts])
    for b in broadcasts:
        b["open_rate"] = engagement.get(b["id"], {}).get("open_rate_human")
    return _page(
        request,
        "dashboard.html",
        user,
        nav="dashboard",
        undelivered=undelivered,
        days=days,
        chart_days=CHART_DAYS,
        peak=peak,
        groups=_CHART_GROUPS,
        broadcasts=broadcasts,
        suppressed=queries.suppression_count(conn, user.account_id),
        inbound=inbound_queue.review_counts(conn, user.account_id, since),
        webhooks_disabled=webhooks.disabled_endpoints(conn, user.account_id),
        provider_unmatched=provider_events.unmatched_count(conn, user.account_id, since),
    )


_CHART_GROUPS = [
    ("delivered", "Delivered", ("delivered", "opened", "clicked")),
    ("sent", "Sent, in progress", ("sent", "pending", "sending")),
    ("deferred", "Still trying", ("deferred",)),
    ("undelivered", "Undelivered", tuple(UNDELIVERED_STATUSES)),
    ("other", "Cancelled, duplicate", ("cancelled", "duplicate")),
]


@router.get("/messages", response_class=HTMLResponse)
def mail_log(request: Request, user: UserDep, conn: api.ReadConnDep) -> Response:
    params = dict(request.query_params)
    error = None
    try:
        page = queries.mail_log(
            conn, user.account_id, _log_filter(params), cursor=params.get("cursor"), limit=PAGE
        )
    except errors.PostwardenError as exc:
        error = exc.message
        page = queries.Page([])
    filters = {k: v for k, v in params.items() if k != "cursor"}
    return _page(
        request,
        "messages.html",
        user,
        status_code=422 if error else 200,
        nav="messages",
        page=page,
        params=params,
        error=error,
        statuses=STATUSES,
        filtered=any(filters.values()),
        next_url=_with(filters, cursor=page.next_cursor) if page.next_cursor else None,
        first_url=_with(filters) if params.get("cursor") else None,
        csv_url="/messages.csv" + _with(filters),
    )


_CSV_FIELDS = [
    "id",
    "created_at",
    "to",
    "channel",
    "subject",
    "status",
    "reason",
    "detail",
    "category",
    "broadcast_id",
    "attempts",
    "updated_at",
    "resend_of",
]


def _cell(value: Any) -> str:
    text = value.isoformat() if isinstance(value, datetime) else "" if value is None else str(value)
    # Spreadsheets run cells starting like a formula; subjects and remote replies are not ours.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@router.get("/messages.csv")
def mail_log_csv(request: Request, user: UserDep) -> Response:
    params = dict(request.query_params)
    try:
        f = _log_filter(params).validate()
    except errors.PostwardenError as exc:
        raise HTTPException(422, exc.message) from exc
    engine = request.app.state.engine

    def rows() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(_CSV_FIELDS)
        cursor, sent = None, 0
        # a reader: a long download must not hold SQLite's write lock
        with db.reader(engine).connect() as conn:
            while sent < CSV_MAX_ROWS:
                page = queries.mail_log(conn, user.account_id, f, cursor=cursor, limit=1000)
                for item in page.items:
                    writer.writerow([_cell(item.get(name)) for name in _CSV_FIELDS])
                sent += len(page.items)
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
                if not page.next_cursor:
                    break
                cursor = page.next_cursor

    stamp = datetime.now().strftime("%Y%m%d-%H%M")
    return StreamingResponse(
        rows(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="postwarden-mail-log-{stamp}.csv"'},
    )


@router.get("/messages/{message_id}", response_class=HTMLResponse)
def message(request: Request, message_id: api.Id, user: UserDep, conn: api.ReadConnDep) -> Response:
    try:
        item = queries.message_detail(conn, user.account_id, message_id)
    except errors.NotFound:
        return _not_found(request, user, f"message {message_id}")
    bounce_mails = queries.bounce_mails(conn, user.account_id, message_id)
    return _page(
        request,
        "message.html",
        user,
        nav="messages",
        m=item,
        bounce_mails=bounce_mails,
        resend_refusal=item["resend_refusal"],
        delivered_statuses=queries.DELIVERED_VALUES,
    )


def _policy(request: Request) -> suppression.Policy:
    return api._policy(request.app.state.settings)


@router.post("/messages/{message_id}/cancel")
def cancel(
    request: Request, message_id: api.Id, form: FormDep, user: UserDep, conn: api.ConnDep
) -> Response:
    try:
        recorder.cancel(
            conn, user.account_id, message_id, actor=user.email, policy=_policy(request)
        )
        conn.commit()
        _flash(request, f"Message {message_id} is cancelled.")
    except errors.NotFound:
        return _not_found(request, user, f"message {message_id}")
    except errors.PostwardenError as exc:
        _flash(request, exc.message, "error")
    return _redirect(f"/messages/{message_id}")


@router.post("/messages/{message_id}/resend")
def resend(
    request: Request, message_id: api.Id, form: FormDep, user: UserDep, conn: api.ConnDep
) -> Response:
    to = str(form.get("to") or "").strip() or None
    back = _local(str(form.get("back") or ""), f"/messages/{message_id}")
    try:
        account = accounts.by_id(conn, user.account_id)
        accepted = accept.resend(conn, account, message_id, to)
        suppression.audit(
            conn,
            user.account_id,
            user.email,
            "message.resend",
            str(message_id),
            new_id=accepted.id,
        )
        conn.commit()
    except errors.NotFound:
        return _not_found(request, user, f"message {message_id}")
    except errors.PostwardenError as exc:
        _flash(request, f"Not resent: {exc.message}", "error")
        return _redirect(back)
    request.app.state.wake()
    _flash(
        request,
        f"Message {message_id} was resent as message {accepted.id} ({accepted.status}).",
        "ok" if accepted.status == "pending" else "error",
    )
    return _redirect(back)


@router.get("/undelivered", response_class=HTMLResponse)
def undelivered(request: Request, user: UserDep, conn: api.ReadConnDep) -> Response:
    params = dict(request.query_params)
    error = None
    total = 0
    page = queries.Page([])
    try:
        since, until = queries.report_window(_day(params.get("since")), _day(params.get("until")))
        status = params.get("status") or ""
        if status and status not in UNDELIVERED_STATUSES:
            raise errors.InvalidInput(f"not an undelivered status: {status!r}")
        f = queries.LogFilter(
            statuses=[status] if status else (),
            channel=params.get("channel") or None,
            since=since,
            until=until,
        )
        total = queries.count_undelivered(conn, user.account_id, f)
        page = queries.undelivered_report(
            conn, user.account_id, f, cursor=params.get("cursor"), limit=PAGE
        )
    except errors.PostwardenError as exc:
        error = exc.message
        since, until = queries.report_window(None, None)
    filters = {k: v for k, v in params.items() if k != "cursor"}
    return _page(
        request,
        "undelivered.html",
        user,
        status_code=422 if error else 200,
        nav="undelivered",
        page=page,
        total=total,
        params=params,
        error=error,
        since=since.date(),
        until=(until - timedelta(days=1)).date(),
        statuses=UNDELIVERED_STATUSES,
        channels=CHANNELS,
        here=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        next_url=_with(filters, cursor=page.next_cursor) if page.next_cursor else None,
        first_url=_with(filters) if params.get("cursor") else None,
    )


@router.get("/suppressions", response_class=HTMLResponse)
def suppressions(
    request: Request, user: UserDep, conn: api.ReadConnDep, search: str = ""
) -> Response:
    entries = suppression.list_entries(conn, user.account_id, search=search.strip(), limit=200)
    return _page(
        request,
        "suppressions.html",
        user,
        nav="suppressions",
        entries=entries,
        search=search,
        blocks=suppression.list_blocks(conn, user.account_id),
        total=queries.suppression_count(conn, user.account_id),
    )


@router.get("/suppressions/remove", response_class=HTMLResponse)
def confirm_remove(
    request: Request,
    user: UserDep,
    conn: api.ReadConnDep,
    address: str,
    category: str | None = None,
) -> Response:
    entries = [
        e
        for e in suppression.list_entries(conn, user.account_id, search=address, limit=50)
        if e.address == addresses.normalize(address)  # type: ignore[attr-defined]
        and (category is None or e.category == category)  # type: ignore[attr-defined]
    ]
    if not entries:
        return _not_found(request, user, f"{address} on the suppression list")
    return _page(
        request,
        "suppression_remove.html",
        user,
        nav="suppressions",
        address=addresses.normalize(address),
        category=category,
        entries=entries,
    )


@router.post("/suppressions/remove")
def remove_suppression(
    request: Request, form: FormDep, user: UserDep, conn: api.ConnDep
) -> Response:
    address = str(form.get("address") or "")
    category = form.get("category")
    try:
        suppression.remove(
            conn,
            user.account_id,
            address,
            actor=user.email,
            category=str(category) if category is not None else None,
        )
        dropped = suppression.dropped_since_removal(conn, user.account_id, address)
        conn.commit()
    except errors.PostwardenError as exc:
        _flash(request, exc.message, "error")
        return _redirect("/suppressions")
    text = f"{address} is marked as valid: later messages to it will be sent."
    if dropped:
        text += (
            f" {len(dropped)} message(s) were dropped for it in the last 30 days; "
            "resend them from the undelivered report."
        )
    _flash(request, text)
    return _redirect("/suppressions")


@router.post("/suppressions")
def add_suppression(request: Request, form: FormDep, user: UserDep, conn: api.ConnDep) -> Response:
    try:
        address = addresses.check(str(form.get("address") or ""))
        added = suppression.suppress(
            conn,
            user.account_id,
            address,
            reason=suppression.MANUAL,
            detail=str(form.get("note") or ""),
            source="web",
            category=str(form.get("category") or ""),
            actor=user.email,
        )
        conn.commit()
    except errors.PostwardenError as exc:
        _flash(request, f"Not added: {exc.message}", "error")
        return _redirect("/suppressions")
    _flash(request, f"{address} " + ("is suppressed." if added else "was already suppressed."))
    return _redirect("/suppressions")


@router.post("/blocks")
def add_block(request: Request, form: FormDep, user: UserDep, conn: api.ConnDep) -> Response:
    pattern = str(form.get("pattern") or "")
    try:
        added = suppression.block(
            conn, user.account_id, pattern, actor=user.email, note=str(form.get("note") or "")
        )
        conn.commit()
    except errors.PostwardenError as exc:
        _flash(request, f"Not blocked: {exc.message}", "error")
        return _redirect("/suppressions#blocks")
    _flash(
        request,
        f"{pattern.strip().lower()} " + ("is blocked." if added else "was already blocked."),
    )
    return _redirect("/suppressions#blocks")


@router.post("/blocks/remove")
def remove_block(request: Request, form: FormDep, user: UserDep, conn: api.ConnDep) -> Response:
    pattern = str(form.get("pattern") or "")
    try:
        suppression.unblock(conn, user.account_id, pattern, actor=user.email)
        conn.commit()
    except errors.PostwardenError as exc:
        _flash(request, exc.message, "error")
    else:
        _flash(request, f"{pattern} is no longer blocked.")
    return _redirect("/suppressions#blocks")


@router.get("/broadcasts/{broadcast_id}", response_class=HTMLResponse)
def broadcast(
    request: Request, broadcast_id: api.Id, user: UserDep, conn: api.ReadConnDep
) -> Response:
    try:
        item = queries.broadcast_detail(conn, user.account_id, broadcast_id)
    except errors.NotFound:
        return _not_found(request, user, f"broadcast {broadcast_id}")
    params = dict(request.query_params)
    status = params.get("status") or ""
    if status not in STATUSES:
        status = ""
    page = queries.mail_log(
        conn,
        user.account_id,
        queries.LogFilter(statuses=[status] if status else (), broadcast_id=broadcast_id),
        cursor=params.get("cursor"),
        limit=PAGE,
    )
    counts = item["counts"]
    filters = {"status": status} if status else {}
    return _page(
        request,
        "broadcast.html",
        user,
        nav="dashboard",
        b=item,
        counts=sorted(counts.items(), key=lambda kv: STATUSES.index(kv[0])),
        peak=max(counts.values(), default=0),
        total=sum(counts.values()),
        engagement=queries.broadcast_engagement(conn, user.account_id, [broadcast_id]).get(
            broadcast_id, {}
        ),
        page=page,
        status=status,
        next_url=_with(filters, cursor=page.next_cursor) if page.next_cursor else None,
        first_url=_with(filters) if params.get("cursor") else None,
    )


# endregion
# region inbound mail to review


@router.get("/inbound", response_class=HTMLResponse)
def inbound_review(request: Request, user: UserDep, conn: api.ReadConnDep) -> Response:
    """The inbound mails of the last 30 days that changed nothing and need a person: those
    that could not be read, and bounces that carry no proof that Postwarden sent what they
    are about."""
    since, _until = queries.report_window(None, None)
    mails = inbound_queue.to_review(conn, user.account_id, since)
    return _page(
        request,
        "inbound_review.html",
        user,
        nav="dashboard",
        since=since.date(),
        unreadable=[m for m in mails if m["state"] == inbound_queue.ERROR],
        unverified=[m for m in mails if m["state"] == inbound_queue.UNVERIFIED],
    )


@router.get("/inbound/{inbound_id}/raw")
def inbound_raw(
    request: Request, inbound_id: api.Id, user: UserDep, conn: api.ReadConnDep
) -> Response:
    """One inbound mail exactly as it was received, as plain text (never rendered)."""
    raw = inbound_queue.mail(conn, user.account_id, inbound_id)
    if raw is None:
        return _not_found(request, user, f"inbound mail {inbound_id}")
    return Response(
        raw,
        media_type="text/plain; charset=utf-8",
        headers={
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": f'inline; filename="inbound-{inbound_id}.eml"',
        },
    )


# endregion
