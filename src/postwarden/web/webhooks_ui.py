"""The web UI's webhook pages: the endpoints and whether they work, each webhook's attempts,
the dead letters and their replay, and the provider events kept for review.

Same session, CSRF and page helpers as the rest of the UI (``web.ui``); same operations as the
JSON API (``web.webhooks``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from postwarden import errors
from postwarden.outbound.webhooks import net
from postwarden.store import accounts, provider_events, queries, suppression, webhooks
from postwarden.web import api, ui
from postwarden.web import webhooks as webhooks_api

router = APIRouter(include_in_schema=False)

STATE_TONE = {"pending": "warn", "delivered": "good", "failed": "bad"}
ui.templates.env.globals["delivery_tone"] = STATE_TONE


@router.get("/webhooks", response_class=HTMLResponse)
def endpoints_page(request: Request, user: ui.UserDep, conn: api.ReadConnDep) -> Response:
    return ui._page(
        request,
        "webhooks.html",
        user,
        nav="webhooks",
        endpoints=webhooks.list_endpoints(conn, user.account_id),
        counts=webhooks.counts(conn, user.account_id),
        dead=webhooks.list_deliveries(conn, user.account_id, state=webhooks.FAILED, limit=50),
        event_types=webhooks.EVENT_TYPES,
        hooks=provider_events.hooks(conn, user.account_id),
    )


@router.post("/webhooks")
async def add_endpoint(request: Request, form: ui.FormDep, user: ui.UserDep) -> Response:
    url = str(form.get("url") or "").strip()
    types = [str(v) for v in form.getlist("event_types")]
    try:
        await net.check_url(url, request.app.state.settings.http)

        def work() -> webhooks.Endpoint:
            with request.app.state.engine.begin() as conn:
                made = webhooks.create_endpoint(
                    conn,
                    user.account_id,
                    url,
                    event_types=types,
                    description=str(form.get("description") or "")[:200],
                )
                suppression.audit(conn, user.account_id, user.email, "webhook.create", url)
                return made

        made = await run_in_threadpool(work)
    except errors.PostwardenError as exc:
        ui._flash(request, f"Not added: {exc.message}", "error")
        return ui._redirect("/webhooks")
    ui._flash(
        request,
        f"Endpoint added. Its signing secret is {made.secret}: give it to the receiving "
        "application now, it is shown on the endpoint's page too.",
    )
    return ui._redirect(f"/webhooks/{made.id}")


@router.get("/webhooks/{endpoint_id}", response_class=HTMLResponse)
def endpoint_page(
    request: Request, endpoint_id: api.Id, user: ui.UserDep, conn: api.ReadConnDep
) -> Response:
    try:
        endpoint = webhooks.get_endpoint(conn, user.account_id, endpoint_id)
    except errors.NotFound:
        return ui._not_found(request, user, f"webhook endpoint {endpoint_id}")
    state = request.query_params.get("state") or None
    if state not in (None, *webhooks.STATES):
        state = None
    return ui._page(
        request,
        "webhook_endpoint.html",
        user,
        nav="webhooks",
        e=endpoint,
        counts=webhooks.counts(conn, user.account_id).get(endpoint_id, {}),
        deliveries=webhooks.list_deliveries(
            conn, user.account_id, endpoint_id=endpoint_id, state=state, limit=100
        ),
        state=state,
        states=webhooks.STATES,
        today=datetime.now().date(),
    )


def _action(request: Request, user: Any, endpoint_id: int, work: Any, done: str) -> Response:
    try:
        with request.app.state.engine.begin() as conn:
            work(conn)
    except errors.PostwardenError as exc:
        ui._flash(request, exc.message, "error")
    else:
        ui._flash(request, done)
    return ui._redirect(f"/webhooks/{endpoint_id}")


@router.post("/webhooks/{endpoint_id}/enable")
def enable(request: Request, endpoint_id: api.Id, form: ui.FormDep, user: ui.UserDep) -> Response:
    on = form.get("enabled") == "1"

    def work(conn: Any) -> None:
        webhooks.update_endpoint(conn, user.account_id, endpoint_id, enabled=on, actor=user.email)
        suppression.audit(
            conn, user.account_id, user.email, "webhook.update", str(endpoint_id), enabled=on
        )

    done = (
        "The endpoint is enabled again. Replay what it missed below."
        if on
        else "The endpoint is disabled: what was pending for it is now in the dead letters."
    )
    return _action(request, user, endpoint_id, work, done)


@router.post("/webhooks/{endpoint_id}/rotate")
def rotate(request: Request, endpoint_id: api.Id, form: ui.FormDep, user: ui.UserDep) -> Response:
    overlap = timedelta(seconds=request.app.state.settings.webhooks.secret_overlap)

    def work(conn: Any) -> None:
        account = accounts.by_id(conn, user.account_id)
        webhooks_api.rotate(conn, account, endpoint_id, overlap, actor=user.email)

    hours = overlap.total_seconds() / 3600
    done = (
        f"New secret made. Both secrets sign for {hours:g} hours: "
        "put the new one in the receiving application before then."
    )
    return _action(request, user, endpoint_id, work, done)


@router.post("/webhooks/{endpoint_id}/delete")
def delete(request: Request, endpoint_id: api.Id, form: ui.FormDep, user: ui.UserDep) -> Response:
    try:
        with request.app.state.engine.begin() as conn:
            webhooks.delete_endpoint(conn, user.account_id, endpoint_id)
            suppression.audit(conn, user.account_id, user.email, "webhook.delete", str(endpoint_id))
    except errors.PostwardenError as exc:
        ui._flash(request, exc.message, "error")
        return ui._redirect(f"/webhooks/{endpoint_id}")
    ui._flash(request, "The endpoint and its webhooks are removed.")
    return ui._redirect("/webhooks")


@router.post("/webhooks/{endpoint_id}/replay")
def replay_range(
    request: Request, endpoint_id: api.Id, form: ui.FormDep, user: ui.UserDep
) -> Response:
    try:
        since = ui._day(str(form.get("since") or ""))
        until = ui._day(str(form.get("until") or ""))
        if since is None or until is None:
            raise errors.InvalidInput("give both days")
    except errors.PostwardenError as exc:
        ui._flash(request, exc.message, "error")
        return ui._redirect(f"/webhooks/{endpoint_id}")
    start, end = queries.report_window(since, until)
    try:
        with request.app.state.engine.begin() as conn:
            count = webhooks.replay_range(
                conn,
                user.account_id,
                since=start,
                until=end,
                endpoint_id=endpoint_id,
                failed_only=form.get("all") != "1",
            )
            suppression.audit(
                conn, user.account_id, user.email, "webhook.replay", f"{since}..{until}", n=count
            )
    except errors.PostwardenError as exc:
        ui._flash(request, exc.message, "error")
    else:
        ui._flash(request, f"{count} webhook(s) from {since} to {until} will be sent again.")
    return ui._redirect(f"/webhooks/{endpoint_id}")


@router.get("/webhooks/deliveries/{delivery_id}", response_class=HTMLResponse)
def delivery_page(
    request: Request, delivery_id: api.Id, user: ui.UserDep, conn: api.ReadConnDep
) -> Response:
    try:
        item = webhooks.get_delivery(conn, user.account_id, delivery_id)
    except errors.NotFound:
        return ui._not_found(request, user, f"webhook {delivery_id}")
    return ui._page(request, "webhook_delivery.html", user, nav="webhooks", d=item)


@router.post("/webhooks/deliveries/{delivery_id}/replay")
def replay_one(
    request: Request, delivery_id: api.Id, form: ui.FormDep, user: ui.UserDep
) -> Response:
    try:
        with request.app.state.engine.begin() as conn:
            webhooks.replay(conn, user.account_id, delivery_id)
            suppression.audit(conn, user.account_id, user.email, "webhook.replay", str(delivery_id))
    except errors.PostwardenError as exc:
        ui._flash(request, exc.message, "error")
    else:
        ui._flash(request, "It will be sent again within seconds, with the same webhook-id.")
    back = ui._local(str(form.get("back") or ""), f"/webhooks/deliveries/{delivery_id}")
    return ui._redirect(back)


@router.get("/providers/events", response_class=HTMLResponse)
def provider_events_page(request: Request, user: ui.UserDep, conn: api.ReadConnDep) -> Response:
    return ui._page(
        request,
        "provider_events.html",
        user,
        nav="webhooks",
        events=provider_events.to_review(conn, user.account_id, state=provider_events.UNMATCHED),
    )


def install(app: Any) -> None:
    app.include_router(router)
