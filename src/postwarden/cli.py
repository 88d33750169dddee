"""The ``postwarden`` command: run the service, manage accounts, and read the mail log."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Connection

from postwarden import errors, runtime, service
from postwarden.domain import addresses
from postwarden.inbound.mail import dsn
from postwarden.intake import accept, schemas
from postwarden.outbound.webhooks import net
from postwarden.settings import Settings
from postwarden.store import accounts, db, provider_events, queries, suppression, webhooks
from postwarden.web import providers

app = typer.Typer(
    help="Postwarden: send notifications and see what became of each one.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
account_app = typer.Typer(help="Accounts (tenants) and their API keys.", no_args_is_help=True)
suppressions_app = typer.Typer(help="The suppression list.", no_args_is_help=True)
user_app = typer.Typer(help="Admin users of the web UI.", no_args_is_help=True)
app.add_typer(account_app, name="account")
app.add_typer(suppressions_app, name="suppressions")
app.add_typer(user_app, name="user")
webhooks_app = typer.Typer(
    help="Webhooks out: endpoints, dead letters, replays.", no_args_is_help=True
)
providers_app = typer.Typer(help="Provider events in: each provider's URL.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(providers_app, name="providers")
console = Console()
errors_console = Console(stderr=True)

AccountOpt = Annotated[
    str | None, typer.Option("--account", "-a", help="Account name (default: the only one)")
]

STATUS_STYLE = {
    "pending": "white",
    "sending": "cyan",
    "deferred": "yellow",
    "sent": "blue",
    "delivered": "green",
    "opened": "green",
    "clicked": "green",
    "bounced": "red",
    "failed": "red",
    "dropped": "magenta",
    "blocked": "magenta",
    "duplicate": "dim",
    "no_channel": "dim",
    "cancelled": "dim",
}


def _parts(migrate: bool = True) -> runtime.Parts:
    service.configure_logging()
    return runtime.open_parts(Settings(), migrate=migrate)


def _fail(message: str) -> typer.Exit:
    errors_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


def _account(conn: Connection, name: str | None) -> accounts.Account:
    if name:
        return accounts.by_name(conn, name)
    if accounts.count(conn) != 1:
        raise errors.InvalidInput("several accounts exist (or none): choose one with --account")
    return accounts.by_id(conn, accounts.only_id(conn))


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    _parts()
    console.print("schema is up to date")


@app.command()
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8025,
    api_processes: Annotated[
        int,
        typer.Option(
            min=0,
            help="Processes of their own answering the API (a Python process uses one core at "
            "a time); 0: the API runs in the main process, with the dispatcher and inbound SMTP",
        ),
    ] = 0,
) -> None:
    """Run the API, the dispatcher and the inbound SMTP server."""
    parts = _parts()
    console.print(f"Postwarden on http://{host}:{port} (API docs at /docs)")
    try:
        service.run(service.serve(parts, host, port, api_processes=api_processes))
    except service.ProcessExited as exc:
        raise _fail(str(exc)) from None


@app.command()
def worker() -> None:
    """Run only a dispatcher (start several, on several machines, against PostgreSQL)."""
    service.run(service.work(_parts()))


@app.command()
def inbound() -> None:
    """Run only the inbound SMTP server for bounces and complaints (POSTWARDEN_INBOUND_*)."""
    parts = _parts()
    console.print(f"inbound SMTP on {parts.settings.inbound_host}:{parts.settings.inbound_port}")
    service.run(service.inbound(parts))


@account_app.command("create")
def account_create(
    name: str,
    bounce_domain: Annotated[
        str | None,
        typer.Option(
            help="Domain of the VERP return paths (default: POSTWARDEN_DEFAULT_BOUNCE_DOMAIN)"
        ),
    ] = None,
) -> None:
    """Create an account; its API key is printed alone on the last line."""
    parts = _parts()
    try:
        with parts.engine.begin() as conn:
            account, key = accounts.create(
                conn, name, bounce_domain or parts.settings.default_bounce_domain
            )
    except errors.PostwardenError as exc:
        raise _fail(exc.message) from exc
    print(f"Created account {account.name!r} (id {account.id}); its API key, shown only once:")
    print(key)


@app.command()
def send(
    to: Annotated[str, typer.Option(help="Recipient address")],
    subject: Annotated[str, typer.Option()],
    sender: Annotated[str, typer.Option("--from", help="Sender address")],
    text: Annotated[str | None, typer.Option(help="Plain-text body")] = None,
    html: Annotated[str | None, typer.Option(help="HTML body")] = None,
    category: Annotated[str, typer.Option()] = "",
    account: AccountOpt = None,
) -> None:
    """Queue one email (the worker or `serve` sends it)."""
    parts = _parts()
    try:
        body = schemas.MessageIn.model_validate(
            {
                "from": sender,
                "to": to,
                "subject": subject,
                "text": text,
                "html": html,
                "category": category,
            }
        )
        with parts.engine.begin() as conn:
            accepted = accept.submit_message(
                conn,
                _account(conn, account),
                body,
                accept.Limits.from_settings(parts.settings),
            )
    except (errors.PostwardenError, ValueError) as exc:
        raise _fail(getattr(exc, "message", str(exc))) from exc
    console.print(f"message {accepted.id}: {accepted.status}")


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else str(value)


@app.command("log")
def log_(
    status: Annotated[list[str] | None, typer.Option(help="Only these statuses")] = None,
    undelivered: Annotated[bool, typer.Option(help="Only undelivered")] = False,
    address: Annotated[str | None, typer.Option(help="Exact address or @domain")] = None,
    broadcast: Annotated[int | None, typer.Option()] = None,
    category: Annotated[str | None, typer.Option()] = None,
    since: Annotated[datetime | None, typer.Option()] = None,
    until: Annotated[datetime | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option()] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    account: AccountOpt = None,
) -> None:
    """The mail log, newest first, with the API's filters."""
    parts = _parts()
    try:
        with db.reader(parts.engine).connect() as conn:
            page = queries.mail_log(
                conn,
                _account(conn, account).id,
                queries.LogFilter(
                    status or (), undelivered, address, broadcast, category, None, since, until
                ),
                limit=limit,
            )
    except errors.PostwardenError as exc:
        raise _fail(exc.message) from exc
    if as_json:
        for item in page.items:
            print(json.dumps(item, default=str))
        return
    table = Table()
    for column in ("id", "created", "status"):
        table.add_column(column, no_wrap=True)
    for column in ("to", "subject", "why"):
        table.add_column(column, overflow="fold")
    for item in page.items:
        style = STATUS_STYLE.get(item["status"], "")
        table.add_row(
            str(item["id"]),
            _when(item["created_at"]),
            f"[{style}]{item['status']}[/{style}]",
            item["to"],
            item["subject"][:30],
            (item["detail"] or "")[:80],
        )
    console.print(table)
    if not page.items:
        console.print("No messages match. Send one with `postwarden send` or the API.")


@app.command()
def show(message_id: int, account: AccountOpt = None) -> None:
    """One message: status, explanation, timeline and SMTP transcripts."""
    parts = _parts()
    try:
        with db.reader(parts.engine).connect() as conn:
            item = queries.message_detail(conn, _account(conn, account).id, message_id)
    except errors.PostwardenError as exc:
        raise _fail(exc.message) from exc
    style = STATUS_STYLE.get(item["status"], "")
    console.print(
        f"[bold]message {item['id']}[/bold] to {item['to']}: "
        f"[{style}]{item['status']}[/{style}] {item['reason'] or ''}"
    )
    if item["explanation"]:
        console.print(f"{item['explanation']['explanation']} {item['explanation']['next_step']}")
    for event in item["events"]:
        console.print(
            f"  {_when(event['occurred_at'])}  {event['kind']:<12} "
            f"{event['source']:<8} {event['detail'] or ''}"
        )
    for attempt in item["attempts"]:
        console.print(
            f"\n[bold]attempt {attempt['number']}[/bold] via {attempt['via']} "
            f"{attempt['remote'] or ''} ({attempt['duration_ms']} ms)"
        )
        console.print(attempt["transcript"], markup=False, highlight=False)


@user_app.command("create")
def user_create(
    email: str,
    account: Annotated[str, typer.Option("--account", "-a", help="Account name")],
    password: Annotated[
        str,
        typer.Option(
            prompt=True, hide_input=True, confirmation_prompt=True, help="Prompted for when absent"
        ),
    ],
) -> None:
    """Create an admin user who signs in to the web UI and sees only this account."""
    from postwarden.store import users

    parts = _parts()
    try:
        with parts.engine.begin() as conn:
            user = users.create(conn, accounts.by_name(conn, account).id, email, password)
    except errors.PostwardenError as exc:
        raise _fail(exc.message) from exc
    console.print(f"Created user {user.email} (id {user.id}) for account {user.account_name!r}")


@suppressions_app.command("list")
def suppressions_list(search: str = "", account: AccountOpt = None) -> None:
    """Suppressed addresses with their reason."""
    parts = _parts()
    with db.reader(parts.engine).connect() as conn:
        rows = suppression.list_entries(conn, _account(conn, account).id, search=search, limit=1000)
    table = Table("address", "category", "reason", "since", "message", "detail")
    for row in rows:
        r: Any = row
        table.add_row(
            r.address,
            r.category or "(all)",
            r.reason,
            _when(r.created_at),
            str(r.message_id or ""),
            (r.detail or "")[:60],
        )
    console.print(table)


@suppressions_app.command("add")
def suppressions_add(
    address: str, category: str = "", note: str = "", account: AccountOpt = None
) -> None:
    """Suppress an address by hand."""
    parts = _parts()
    try:
        with parts.engine.begin() as conn:
            added = suppression.suppress(
                conn,
                _account(conn, account).id,
                addresses.check(address),
                reason=suppression.MANUAL,
                detail=note,
                source="cli",
                category=category,
                actor="cli",
            )
    except errors.PostwardenError as exc:
        raise _fail(exc.message) from exc
    console.print(f"{address}: " + ("suppressed" if added else "was already suppressed"))


@suppressions_app.command("remove")
def suppressions_remove(
    address: str, category: str | None = None, account: AccountOpt = None
) -> None:
    """Mark an address as valid again (audited); lists what was dropped for it lately."""
    parts = _parts()
    try:
        with parts.engine.begin() as conn:
            account_id = _account(conn, account).id
            suppression.remove(conn, account_id, address, actor="cli", category=category)
            dropped = suppression.dropped_since_removal(conn, account_id, address)
    except errors.PostwardenError as exc:
        raise _fail(exc.message) from exc
    console.print(f"{address} removed from the suppression list")
    if dropped:
        console.print(
            f"{len(dropped)} message(s) were dropped for it in the last 30 days: "
            + ", ".join(map(str, dropped))
            + " (resend with POST /v1/messages/{id}/resend)"
        )


@webhooks_app.command("add")
def webhooks_add(
    url: str,
    event: Annotated[
        list[str] | None, typer.Option(help="An event type it takes (repeat); none: every type")
    ] = None,
    description: str = "",
    account: AccountOpt = None,
) -> None:
    """Add an endpoint (its URL checked now and at every request); prints its secret."""
    parts = _parts()
    try:
        asyncio.run(net.check_url(url, parts.settings.http))
        with parts.engine.begin() as conn:
            made = webhooks.create_endpoint(
                conn,
                _account(conn, account).id,
                url,
                event_types=event or (),
                description=description,
            )
    except errors.PostwardenError as exc:
        raise _fail(exc.message) from exc
    print(f"Added endpoint {made.id} ({made.url}); its signing secret:")
    print(made.secret)


@webhooks_app.command("list")
def webhooks_list(account: AccountOpt = None) -> None:
    """The account's endpoints, whether each works, and their webhooks per state."""
    parts = _parts()
    with db.reader(parts.engine).connect() as conn:
        account_id = _account(conn, account).id
        endpoints = webhooks.list_endpoints(conn, account_id)
        counts = webhooks.counts(conn, account_id)
    table = Table("id", "url", "takes", "state", "delivered", "pending", "dead letters")
    for e in endpoints:
        c = counts.get(e.id, {})
        state = "disabled: " + (e.disabled_reason or "") if not e.enabled else "working"
        if e.enabled and e.failing_since:
            state = f"failing since {_when(e.failing_since)}"
        table.add_row(
            str(e.id),
            e.url,
            ", ".join(e.event_types) or "every type",
            state,
            *(str(c.get(k, 0)) for k in ("delivered", "pending", "failed")),
        )
    console.print(table)


@webhooks_app.command("rotate")
def webhooks_rotate(
    endpoint_id: int,
    overlap: Annotated[float | None, typer.Option(help="Hours the old secret still signs")] = None,
    account: AccountOpt = None,
) -> None:
    """A new signing secret (printed); the previous one signs too during the overlap."""
    parts = _parts()
    hours = overlap if overlap is not None else parts.settings.webhooks.secret_overlap / 3600
    try:
        with parts.engine.begin() as conn:
            rotated = webhooks.rotate_secret(
                conn, _account(conn, account).id, endpoint_id, overlap=timedelta(hours=hours)
            )
    except errors.PostwardenError as exc:
        raise _fail(exc.message) from exc
    print(f"New secret of endpoint {endpoint_id} (the previous one signs for {hours:g} h):")
    print(rotated.secret)


@webhooks_app.command("enable")
def webhooks_enable(endpoint_id: int, off: bool = False, account: AccountOpt = None) -> None:
    """Enable an endpoint again (afresh), or disable it with --off."""
    parts = _parts()
    try:
        with parts.engine.begin() as conn:
            webhooks.update_endpoint(
                conn, _account(conn, account).id, endpoint_id, enabled=not off, actor="cli"
            )
    except errors.PostwardenError as exc:
        raise _fail(exc.message) from exc
    console.print(f"endpoint {endpoint_id} " + ("disabled" if off else "enabled"))


@webhooks_app.command("dead-letters")
def webhooks_dead_letters(account: AccountOpt = None, limit: int = 100) -> None:
    """Webhooks that could not be delivered (retries ran out, or the endpoint is disabled)."""
    parts = _parts()
    with db.reader(parts.engine).connect() as conn:
        rows = webhooks.list_deliveries(
            conn, _account(conn, account).id, state=webhooks.FAILED, limit=limit
        )
    table = Table("id", "created", "event", "url", "attempts", "last error")
    for r in rows:
        table.add_row(
            str(r["id"]),
            _when(r["created_at"]),
            r["event_type"],
            r["url"],
            str(r["attempts"]),
            (r["last_error"] or "")[:80],
        )
    console.print(table)


@webhooks_app.command("replay")
def webhooks_replay(
    delivery: Annotated[int | None, typer.Option(help="One webhook, by id")] = None,
    since: Annotated[datetime | None, typer.Option(help="A range's start")] = None,
    until: Annotated[datetime | None, typer.Option(help="A range's end (default: now)")] = None,
    endpoint: Annotated[int | None, typer.Option(help="Only this endpoint's")] = None,
    include_delivered: bool = False,
    account: AccountOpt = None,
) -> None:
    """Send again one webhook, or those of a time range (the dead letters, or all)."""
    parts = _parts()
    if (delivery is None) == (since is None):
        raise _fail("give --delivery ID, or --since (and --until)")
    try:
        with parts.engine.begin() as conn:
            account_id = _account(conn, account).id
            if delivery is not None:
                webhooks.replay(conn, account_id, delivery)
                n = 1
            else:
                assert since is not None
                n = webhooks.replay_range(
                    conn,
                    account_id,
                    since=_aware(since),
                    until=_aware(until or datetime.now(UTC)),
                    endpoint_id=endpoint,
                    failed_only=not include_delivered,
                )
    except errors.PostwardenError as exc:
        raise _fail(exc.message) from exc
    console.print(f"{n} webhook(s) will be sent again")


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@providers_app.command("set")
def providers_set(
    provider: str,
    config: Annotated[
        str,
        typer.Option(
            help='JSON: sns {"topic_arns": [...]}, sendgrid {"public_key": ...}, mailgun '
            '{"signing_key": ...}, postmark {"username", "password", "allowed_ips"}'
        ),
    ],
    account: AccountOpt = None,
) -> None:
    """Set up a provider's events URL (printed) with what verifies its requests."""
    parts = _parts()
    try:
        values = json.loads(config)
        if not isinstance(values, dict):
            raise errors.InvalidInput("the configuration is a JSON object")
        with parts.engine.begin() as conn:
            checked = providers.check_config(provider, values)
            hook = provider_events.set_hook(conn, _account(conn, account).id, provider, checked)
    except errors.PostwardenError as exc:
        raise _fail(exc.message) from exc
    except ValueError as exc:
        raise _fail(f"the configuration is not valid: {exc}") from exc
    console.print(f"{provider} posts its events to {hook.path} (on this server's public address)")


@app.command()
def purge(
    older_than: Annotated[
        int,
        typer.Option(
            "--older-than", min=1, metavar="DAYS", help="Delete messages older than DAYS days"
        ),
    ],
    batch_size: Annotated[int, typer.Option(min=1)] = 1000,
) -> None:
    """Delete old messages with their events, attempts, bodies and attachments, in bounded
    batches (safe while the service runs); messages still queued are kept. Then fold the
    undelivered counters."""
    from datetime import timedelta

    from postwarden.store import retention

    parts = _parts()
    purged = retention.purge(parts.engine, timedelta(days=older_than), batch_size=batch_size)
    console.print(f"purged {purged.summary()}")


@app.command("parse-bounce")
def parse_bounce(files: list[Path]) -> None:
    """Parse bounce mails: one JSON line per recipient found in each file."""
    failed = False
    for path in files:
        try:
            lines = dsn.parse_bounce_lines(str(path))
        except OSError as exc:
            errors_console.print(f"[red]error:[/red] cannot read {path}: {exc.strerror}")
            failed = True
            continue
        for line in lines:
            print(json.dumps(line))
    if failed:
        raise typer.Exit(1)


@app.command()
def demo(
    keep_running: Annotated[bool, typer.Option(help="Keep serving afterwards")] = False,
    count: Annotated[int, typer.Option(help="Recipients in the demo broadcast")] = 300,
    port: Annotated[int, typer.Option()] = 8025,
    database: Annotated[Path, typer.Option(help="SQLite file (made anew)")] = Path(
        "postwarden-demo.db"
    ),
) -> None:
    """Deliver a realistic broadcast to a loopback recipient simulator and show the outcome."""
    from postwarden import demo as demo_module

    asyncio.run(
        demo_module.run(
            console, database=database, count=count, port=port, keep_running=keep_running
        )
    )
