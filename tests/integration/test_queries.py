"""The mail log's date-range pages and the undelivered count, on both databases: pages of a
date range go newest first by (created_at, id) with a cursor of their own; the undelivered
count read from ``undelivered_counts`` always equals the messages counted one by one."""

from __future__ import annotations

import re
import threading
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, delete, func, insert, select, text, update

from postwarden import errors
from postwarden.domain.status import Kind
from postwarden.intake import accept, schemas
from postwarden.settings import Settings
from postwarden.store import accounts, queries, recorder, retention, suppression
from postwarden.store import tables as t
from postwarden.web.app import create_app

m = t.messages
DAY = date(2026, 3, 10)
NOON = datetime(2026, 3, 10, 12, tzinfo=UTC)
LIMITS = accept.Limits(10_000_000, 1000)


def _content(conn: Connection, account_id: int) -> int:
    return int(
        conn.scalar(
            insert(t.contents)
            .values(
                account_id=account_id,
                from_addr="app@acme.test",
                subject="Hi",
                headers={},
                created_at=NOON,
            )
            .returning(t.contents.c.id)
        )
    )


def _insert(
    conn: Connection, account_id: int, rows: list[tuple[str, datetime]], **more: Any
) -> list[int]:
    """Messages with the given (status, created_at), in one multi-row statement."""
    content_id = _content(conn, account_id)
    values = [
        {
            "account_id": account_id,
            "content_id": content_id,
            "to_addr": f"r{i}@example.test",
            "status": status,
            "created_at": at,
            "updated_at": at,
        }
        | more
        for i, (status, at) in enumerate(rows)
    ]
    return list(conn.scalars(insert(m).returning(m.c.id), values))


def _log_ids(conn: Connection, account_id: int, f: queries.LogFilter, limit: int = 2) -> list[int]:
    """Every id of the mail log for ``f``, walking the pages with their cursors."""
    seen: list[int] = []
    cursor = None
    while True:
        page = queries.mail_log(conn, account_id, f, cursor=cursor, limit=limit)
        seen += [item["id"] for item in page.items]
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor


def test_date_range_pages_go_by_creation_time_then_id(
    engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    early, late = NOON - timedelta(hours=3), NOON + timedelta(microseconds=1)
    with engine.begin() as conn:
        # ids do not follow creation time; three messages share one instant
        ids = _insert(
            conn,
            account.id,
            [
                ("delivered", late),
                ("bounced", early),
                ("delivered", NOON),
                ("failed", NOON),
                ("delivered", NOON),
                ("delivered", NOON - timedelta(days=2)),  # outside the range
            ],
        )
    newest_first = [ids[0], ids[4], ids[3], ids[2], ids[1]]
    window = queries.LogFilter(since=NOON - timedelta(days=1), until=NOON + timedelta(days=1))
    with engine.connect() as conn:
        for limit in (1, 2, 3, 50):
            assert _log_ids(conn, account.id, window, limit) == newest_first
        assert _log_ids(conn, account.id, queries.LogFilter(until=NOON)) == [
            ids[1],
            ids[5],
        ]
        # without a date the log stays in id order
        assert _log_ids(conn, account.id, queries.LogFilter()) == sorted(ids, reverse=True)
        undelivered = queries.undelivered_report(conn, account.id, window, limit=1, cursor=None)
        assert [i["id"] for i in undelivered.items] == [ids[3]]
        rest = queries.undelivered_report(
            conn, account.id, window, limit=1, cursor=undelivered.next_cursor
        )
        assert [i["id"] for i in rest.items] == [ids[1]] and rest.next_cursor is None


def test_a_cursor_only_works_for_the_order_it_came_from(
    engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    with engine.begin() as conn:
        _insert(conn, account.id, [("delivered", NOON)] * 3)
    window = queries.LogFilter(since=NOON - timedelta(days=1))
    with engine.connect() as conn:
        by_id = queries.mail_log(conn, account.id, queries.LogFilter(), limit=1).next_cursor
        by_date = queries.mail_log(conn, account.id, window, limit=1).next_cursor
        assert by_id and by_date and by_id != by_date
        with pytest.raises(errors.InvalidInput, match="another order"):
            queries.mail_log(conn, account.id, window, cursor=by_id)
        with pytest.raises(errors.InvalidInput, match="another order"):
            queries.mail_log(conn, account.id, queries.LogFilter(), cursor=by_date)
        for garbage in ("garbage", queries.encode_cursor(1)[:-1] + "!", "dDEyMw", "dDEuMi4z"):
            with pytest.raises(errors.InvalidInput, match="not one this API gave out"):
                queries.mail_log(conn, account.id, window, cursor=garbage)


def test_the_api_and_the_ui_page_through_a_date_range(
    settings: Settings,
    engine: Engine,
    account_key: tuple[accounts.Account, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from postwarden.store import users
    from postwarden.web import ui

    account, key = account_key
    now = datetime.now(UTC)
    with engine.begin() as conn:
        ids = _insert(
            conn,
            account.id,
            [("bounced", now - timedelta(minutes=i)) for i in range(5)],
            reason="userunknown",
        )
        users.create(conn, account.id, "admin@acme.test", "correct horse battery")
    client = TestClient(create_app(settings, engine, b"s" * 32))
    auth = {"Authorization": f"Bearer {key}"}
    since = "&since=" + (now - timedelta(days=1)).isoformat().replace("+", "%2B")
    seen: list[int] = []
    url = "/v1/messages?limit=2" + since
    while url:
        page = client.get(url, headers=auth).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        url = f"/v1/messages?limit=2&cursor={cursor}{since}" if cursor else ""
    assert seen == ids
    by_id = queries.encode_cursor(ids[2])
    wrong = client.get(f"/v1/messages?cursor={by_id}{since}", headers=auth)
    assert wrong.status_code == 422 and "another order" in wrong.json()["detail"]

    monkeypatch.setattr(ui, "PAGE", 2)
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
    assert token
    client.post(
        "/login",
        data={"email": "admin@acme.test", "password": "correct horse battery", "csrf": token[1]},
    )
    for path in ("/undelivered", f"/messages?since={(now - timedelta(days=1)).date()}"):
        listed: list[int] = []
        url = path
        while url:
            html = client.get(url).text
            listed += [int(i) for i in re.findall(r'<td><a href="/messages/(\d+)"', html)]
            found = re.search(r'href="(\?[^"]*cursor=[^"]+)" rel="next"', html)
            url = path.split("?")[0] + found[1].replace("&amp;", "&") if found else ""
        assert listed == ids, path


def _live(conn: Connection, account_id: int, f: queries.LogFilter) -> int:
    """The report's rows, counted one by one (what the user sees listed)."""
    total, cursor = 0, None
    while True:
        page = queries.undelivered_report(conn, account_id, f, cursor=cursor, limit=500)
        total += len(page.items)
        if page.next_cursor is None:
            return total
        cursor = page.next_cursor


def _check(engine: Engine, account_ids: list[int], today: date) -> list[int]:
    """The fast count equals the live one for several windows and status filters, and the
    table equals the messages grouped by (account, UTC day, status); returns the 30-day
    counts."""
    windows = [
        queries.report_window(None, None, today=today),
        queries.report_window(today, today),
        queries.report_window(today - timedelta(days=1), today - timedelta(days=1)),
        (queries.report_window(today, today)[0], None),
        (None, queries.report_window(today, today)[0]),
    ]
    counts = []
    with engine.connect() as conn:
        for account_id in account_ids:
            for since, until in windows:
                for statuses in ((), ("bounced",), ("dropped", "failed")):
                    f = queries.LogFilter(statuses=statuses, since=since, until=until)
                    fast = queries.count_undelivered(conn, account_id, f)
                    assert fast == _live(conn, account_id, f), (account_id, since, until)
            counts.append(
                queries.count_undelivered(
                    conn,
                    account_id,
                    queries.LogFilter(since=windows[0][0], until=windows[0][1]),
                )
            )
        c = t.undelivered_counts.c
        kept = {
            (a, d, s): n
            for a, d, s, n in conn.execute(
                select(c.account_id, c.day, c.status, func.sum(c.n)).group_by(
                    c.account_id, c.day, c.status
                )
            )
            if n
        }
        day = func.date(m.c.created_at)
        if engine.dialect.name == "postgresql":
            day = func.date(func.timezone("UTC", m.c.created_at))
        actual = {
            (a, d if isinstance(d, date) else date.fromisoformat(d), s): n
            for a, d, s, n in conn.execute(
                select(m.c.account_id, day, m.c.status, func.count())
                .where(m.c.status.in_(queries.UNDELIVERED_VALUES))
                .group_by(m.c.account_id, day, m.c.status)
            )
        }
        assert kept == actual
    return counts


def test_the_undelivered_count_follows_every_change(
    engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    today = DAY
    midnight = datetime(2026, 3, 10, tzinfo=UTC)
    policy = suppression.Policy()
    with engine.begin() as conn:
        other, _ = accounts.create(conn, "globex", "bounces.globex.test")
        statuses = ["pending", "bounced", "dropped", "failed", "blocked", "no_channel"]
        statuses += ["delivered", "duplicate", "cancelled", "sent"]
        times = [
            midnight - timedelta(microseconds=1),
            midnight,
            NOON,
            midnight - timedelta(days=40),
        ]
        rows = [(s, at) for s in statuses for at in times]
        ids = _insert(conn, account.id, rows)
        _insert(conn, other.id, rows[:12])
    assert _check(engine, [account.id, other.id], today) == [15, 6]

    by = dict(zip(rows, ids, strict=True))
    with engine.begin() as conn:
        # the recorder: a pending message bounces; another is delivered (not counted)
        recorder.record(
            conn,
            [
                recorder.Fact(by["pending", NOON], Kind.BOUNCED, "smtp", reason="userunknown"),
                recorder.Fact(by["pending", midnight], Kind.DELIVERED, "smtp"),
            ],
            policy=policy,
        )
        # a status leaves the undelivered set, another moves within it, in one statement
        conn.execute(
            update(m)
            .where(m.c.id.in_([by["bounced", midnight], by["failed", midnight]]))
            .values(status="delivered")
        )
        conn.execute(update(m).where(m.c.id == by["dropped", NOON]).values(status="blocked"))
        # a statement that changes no status, and one that sets the status it already has
        conn.execute(update(m).where(m.c.account_id == account.id).values(attempts=3))
        conn.execute(update(m).where(m.c.status == "blocked").values(status="blocked"))
        # a message moved to another day, out of the 30 days
        conn.execute(
            update(m)
            .where(m.c.id == by["no_channel", NOON])
            .values(created_at=midnight - timedelta(days=35))
        )
    assert _check(engine, [account.id, other.id], today) == [13, 6]

    with engine.begin() as conn:
        # a resend, delivered: its original leaves the report; a second delivered resend of
        # the same original takes nothing more off
        original = by["bounced", NOON]
        first = accept.resend(conn, account, original, "fixed@example.test").id
        second = accept.resend(conn, account, original, "fixed2@example.test").id
        for resend in (first, second):
            recorder.record(conn, [recorder.Fact(resend, Kind.DELIVERED, "smtp")], policy=policy)
        # a resend that bounced leaves its original on the report (and counts itself)
        third = accept.resend(conn, account, by["failed", NOON], "also@example.test").id
        conn.execute(update(m).where(m.c.id == third).values(created_at=NOON))
        recorder.record(conn, [recorder.Fact(third, Kind.BOUNCED, "smtp")], policy=policy)
    assert _check(engine, [account.id, other.id], today) == [13, 6]

    with engine.begin() as conn:
        # messages deleted one way or another
        conn.execute(delete(m).where(m.c.id == by["blocked", NOON]))
    retention.purge(engine, timedelta(days=30), now=datetime(2026, 3, 11, tzinfo=UTC), pause=0)
    assert _check(engine, [account.id, other.id], today) == [12, 6]


def _count_rows(engine: Engine) -> list[tuple[date, str, int, int]]:
    c = t.undelivered_counts.c
    with engine.connect() as conn:
        return [
            (d if isinstance(d, date) else date.fromisoformat(d), s, w, n)
            for d, s, w, n in conn.execute(select(c.day, c.status, c.writer, c.n))
        ]


def test_compaction_folds_the_counts_into_one_row_per_day_and_status(
    engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    """Each PostgreSQL backend counts in rows of its own and deleted messages leave rows of
    zero; compaction (the end of every purge) folds them into one row per (account, day,
    status) and drops the zeros, without changing a count."""
    account = account_key[0]
    old = NOON - timedelta(days=40)
    for _ in range(3):  # three connections: on PostgreSQL, three writers
        with engine.begin() as conn:
            _insert(conn, account.id, [("bounced", NOON), ("dropped", NOON), ("failed", old)])
        engine.dispose()
    with engine.begin() as conn:
        conn.execute(delete(m).where(m.c.status == "failed"))
    rows = _count_rows(engine)
    if engine.dialect.name == "postgresql":
        assert len({w for _d, _s, w, _n in rows}) == 4  # three inserting, one deleting
        assert len(rows) == 10
    else:
        assert len(rows) == 3  # SQLite has one writer; the old day's row now counts 0

    assert retention.compact_counts(engine) == len(rows) - 2
    assert sorted(_count_rows(engine)) == [(DAY, "bounced", 0, 3), (DAY, "dropped", 0, 3)]
    assert _check(engine, [account.id], DAY) == [6]
    assert retention.compact_counts(engine) == 0


@pytest.mark.parametrize(
    "db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_compaction_never_waits_for_a_writer_in_flight(
    engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    """A transaction that holds its counter rows is skipped, not waited for (waiting could
    deadlock with it); its rows are folded by the next compaction once it has committed."""
    account = account_key[0]
    writer = engine.connect()  # checked out first: the insert below is another backend's
    try:
        _insert(writer, account.id, [("bounced", NOON)])
        writer.commit()
        with engine.begin() as conn:
            _insert(conn, account.id, [("bounced", NOON)])
        _insert(writer, account.id, [("bounced", NOON)])  # uncommitted: its row is locked
        done: list[int | BaseException] = []

        def compact() -> None:
            try:
                done.append(retention.compact_counts(engine))
            except BaseException as exc:
                done.append(exc)

        thread = threading.Thread(target=compact)
        thread.start()
        thread.join(10)
        assert done == [0]  # the committed row moved to writer 0: nothing fewer
        assert sorted(r for r in _count_rows(engine) if r[2] == 0) == [(DAY, "bounced", 0, 1)]
        writer.commit()
    finally:
        writer.close()
    assert _check(engine, [account.id], DAY) == [3]
    assert retention.compact_counts(engine) == 1
    assert _count_rows(engine) == [(DAY, "bounced", 0, 3)]


def test_other_filters_count_the_messages(
    engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    account = account_key[0]
    with engine.begin() as conn:
        _insert(conn, account.id, [("bounced", NOON), ("bounced", NOON + timedelta(hours=1))])
        # the table alone would say 5: proof the filters below do not read it
        conn.execute(update(t.undelivered_counts).values(n=5))
    since, until = queries.report_window(DAY, DAY)
    with engine.connect() as conn:
        assert queries.count_undelivered(conn, account.id, queries.LogFilter(since=since)) == 5
        for f, expected in (
            (queries.LogFilter(since=since, channel="email"), 2),
            (queries.LogFilter(since=since, address="@example.test"), 2),
            (queries.LogFilter(since=since, category=""), 2),
            (queries.LogFilter(since=NOON + timedelta(minutes=30)), 1),
            (queries.LogFilter(until=until - timedelta(hours=11)), 1),
            (queries.LogFilter(since=since.replace(tzinfo=None)), 2),  # no zone: not whole days
        ):
            assert queries.count_undelivered(conn, account.id, f) == expected, f


@pytest.mark.parametrize(
    "db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_concurrent_writers_never_wait_for_each_other_on_counts(
    engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    """Two open transactions count messages of the same (account, day, status) keys, in
    opposite orders: neither waits for the other (each writes its own rows), so neither can
    deadlock; both counts survive."""
    account = account_key[0]
    other_day = NOON - timedelta(days=1)
    with engine.begin() as conn:
        content_id = _content(conn, account.id)
    first, second = engine.connect(), engine.connect()
    try:
        for conn, days in ((first, (NOON, other_day)), (second, (other_day, NOON))):
            conn.execute(text("SET lock_timeout = '2s'"))
            for at in days:
                conn.execute(
                    insert(m).values(
                        account_id=account.id,
                        content_id=content_id,
                        status="dropped",
                        created_at=at,
                        updated_at=at,
                    )
                )
        done: list[BaseException | None] = []

        def finish(conn: Connection) -> None:
            try:
                conn.execute(update(m).where(m.c.status == "dropped").values(status="blocked"))
                conn.commit()
                done.append(None)
            except BaseException as exc:
                done.append(exc)

        threads = [threading.Thread(target=finish, args=(c,)) for c in (second, first)]
        # each updates only its own uncommitted rows; the counts must not make them wait
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert done == [None, None]
    finally:
        first.close()
        second.close()
    with engine.connect() as conn:
        f = queries.LogFilter(statuses=["blocked"])
        assert queries.count_undelivered(conn, account.id, f) == 4
        assert conn.scalar(select(func.count()).where(m.c.status == "blocked")) == 4


def test_submitted_undelivered_messages_are_counted(
    engine: Engine, account_key: tuple[accounts.Account, str]
) -> None:
    """Intake's own insert of a message it decided not to send."""
    account = account_key[0]
    with engine.begin() as conn:
        suppression.block(conn, account.id, "@blocked.test", actor="test")
        body = schemas.MessageIn.model_validate(
            {"from": "app@acme.test", "to": "x@blocked.test", "subject": "Hi", "text": "hello"}
        )
        accept.submit_message(conn, account, body, LIMITS)
    today = datetime.now(UTC).date()
    with engine.connect() as conn:
        f = queries.LogFilter(since=queries.report_window(today, today)[0])
        assert queries.count_undelivered(conn, account.id, f) == 1
