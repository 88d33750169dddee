"""The admin web UI: server-rendered pages over the same reads and actions as the JSON API.

Sessions are Starlette's signed cookie (itsdangerous), HttpOnly and SameSite=Lax. Every
visitor's session carries a random CSRF token; every form posts it back, and a POST without
the matching token is refused with 403 before anything else happens.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import secrets
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData
from starlette.middleware.sessions import SessionMiddleware

from postwarden import errors
from postwarden.domain import addresses
from postwarden.domain.status import UNDELIVERED, Status
from postwarden.intake import accept
from postwarden.store import (
    accounts,
    db,
    inbound_queue,
    provider_events,
    queries,
    recorder,
    suppression,
    users,
    webhooks,
)
from postwarden.web import api

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)

COOKIE = "pw_session"
SESSION_SECONDS = 12 * 3600
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
    app's secret: HttpOnly, SameSite=Lax, 12 hours."""
    secret: bytes = app.state.secret
    key = hmac.new(secret, b"postwarden web ui session", hashlib.sha256).hexdigest()
    app.add_middleware(
        SessionMiddleware,
        secret_key=key,
        session_cookie=COOKIE,
        max_age=SESSION_SECONDS,
        same_site="lax",
        https_only=app.state.settings.tracking_base_url.startswith("https://"),
    )
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")


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


async def csrf_form(request: Request) -> FormData:
    """The posted form, once its CSRF token matches the session's; 403 otherwise."""
    form = await request.form()
    sent = form.get("csrf")
    expected = request.session.get("csrf")
    if not isinstance(sent, str) or not expected or not hmac.compare_digest(sent, expected):
        raise HTTPException(
            403,
            "The form's security token is missing or out of date. Reload the page and try again.",
        )
    return form


def _user(request: Request) -> users.User:
    """The signed-in user, or a redirect to the sign-in page."""
    user_id = request.session.get("uid")
    user = None
    if isinstance(user_id, int):
        with db.reader(request.app.state.engine).connect() as conn:
            user = users.by_id(conn, user_id)
    if user is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(303, headers={"Location": "/login?" + urlencode({"next": target})})
    return user


UserDep = Annotated[users.User, Depends(_user)]
FormDep = Annotated[FormData, Depends(csrf_form)]


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
        {"user": user, "csrf": _csrf(request), "flash": flash, **context},
        status_code=status_code,
    )
    return response


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
        return int(value)
    except ValueError as exc:
        raise errors.InvalidInput(f"not a number: {value!r}") from exc


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


@router.post("/login")
def login(request: Request, form: FormDep) -> Response:
    email = str(form.get("email") or "")
    password = str(form.get("password") or "")
    target = _local(str(form.get("next") or "/"))
    with request.app.state.engine.begin() as conn:
        user = users.verify(conn, email, password)
    if user is None:
        return _page(
            request,
            "login.html",
            None,
            401,
            next=target,
            email=email,
            error="The email address or the password is wrong.",
        )
    # A fresh session (and CSRF token) at sign-in: nothing set before it carries over.
    request.session.clear()
    _set(request, uid=user.id, csrf=secrets.token_urlsafe(24))
    return _redirect(target)


@router.post("/logout")
def logout(request: Request, form: FormDep) -> Response:
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
def message(request: Request, message_id: int, user: UserDep, conn: api.ReadConnDep) -> Response:
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
    request: Request, message_id: int, form: FormDep, user: UserDep, conn: api.ConnDep
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
    request: Request, message_id: int, form: FormDep, user: UserDep, conn: api.ConnDep
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
    request: Request, broadcast_id: int, user: UserDep, conn: api.ReadConnDep
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
def inbound_review(request: Request, user: UserDep, conn: api.ConnDep) -> Response:
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
def inbound_raw(request: Request, inbound_id: int, user: UserDep, conn: api.ConnDep) -> Response:
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
