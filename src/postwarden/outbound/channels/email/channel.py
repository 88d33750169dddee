"""The email channel: build = compose + VERP return path + tracking; send = SMTP; every SMTP
outcome judged here into a :class:`base.Verdict` (:func:`judge`).

A message that cannot be built (a header the email package refuses, a broken content) is a
``failed`` verdict of its own, with the error in words: it never fails the rest of its batch.
A retry sends the bytes kept at its first attempt, built once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from postwarden.domain import classify, verp
from postwarden.outbound.channels import base
from postwarden.outbound.channels.email import compose, smtp, tracking
from postwarden.settings import Settings
from postwarden.store import outbox, queue

log = logging.getLogger(__name__)

_CACHED_CONTENTS = 10_000


class EmailChannel:
    """Email over SMTP, through the configured relay or straight to each recipient's MX."""

    name = "email"
    source = "smtp"

    def __init__(
        self, settings: Settings, secret: bytes, *, sender: smtp.SMTPSender | None = None
    ) -> None:
        self.settings = settings
        self.secret = secret
        self.sender = sender or smtp.SMTPSender(settings.smtp, helo_name=settings.helo_name)
        self.composer = compose.Composer()
        self._contents: dict[int, compose.Content] = {}
        self._bounce_domains: dict[int, str] = {}

    # -- build (a thread, on a read-only connection) --------------------------------------

    def build(
        self, conn: Connection, claimed: Sequence[queue.Claimed]
    ) -> list[smtp.Email | base.Verdict]:
        stored = outbox.kept_bodies(conn, [c.id for c in claimed])
        new = [c for c in claimed if c.id not in stored]
        self._load_contents(conn, {c.content_id for c in new})
        self._load_domains(conn, {c.account_id for c in claimed})
        files = outbox.attachments(conn, [c.id for c in new if c.has_attachments])
        tracks = outbox.account_tracking(conn, {c.account_id for c in new if c.track is None})
        built: list[smtp.Email | base.Verdict] = []
        for c in claimed:
            try:
                built.append(self._build_one(c, stored.get(c.id), files, tracks))
            except Exception as exc:
                log.warning("message %d cannot be built: %s", c.id, exc)
                built.append(unbuildable(c.id, exc))
        return built

    def _build_one(
        self,
        c: queue.Claimed,
        data: bytes | None,
        files: dict[int, list[Any]],
        tracks: dict[int, bool],
    ) -> smtp.Email:
        domain = self._bounce_domains[c.account_id]
        token = verp.token(self.secret, c.id)
        keep = None
        if data is None:
            content = self._contents[c.content_id]
            prepared = tracking.prepare_claimed(
                c, content, account_tracks=tracks, settings=self.settings, secret=self.secret
            )
            data = keep = self.composer.build(
                content_id=c.content_id,
                content=content,
                to=c.to_addr,
                token=token,
                message_id_domain=domain,
                attachments=[
                    compose.Attachment(f.filename, f.content_type, f.data or b"")
                    for f in files.get(c.id, ())
                ],
                **prepared.build_args(),
            )
        return base.Outgoing(
            c.id, c.to_addr, smtp.Mail(f"{verp.PREFIX}{token}@{domain}", data), keep
        )

    def _load_contents(self, conn: Connection, ids: set[int]) -> None:
        missing = ids - self._contents.keys()
        if not missing:
            return
        if len(self._contents) > _CACHED_CONTENTS:
            self._contents.clear()
        for row in outbox.contents(conn, missing):
            self._contents[row.id] = compose.Content(
                row.from_addr, row.from_name, row.subject, row.text, row.html, row.headers or {}
            )

    def _load_domains(self, conn: Connection, ids: set[int]) -> None:
        missing = ids - self._bounce_domains.keys()
        if missing:
            self._bounce_domains.update(outbox.bounce_domains(conn, missing))

    # -- send -----------------------------------------------------------------------------

    async def send(self, batch: Sequence[smtp.Email]) -> list[base.Verdict]:
        return [judge(attempt) for attempt in await self.sender.send(batch)]

    async def aclose(self) -> None:
        await self.sender.aclose()


def unbuildable(message_id: int, exc: Exception) -> base.Verdict:
    """The verdict on a message that cannot be built: failed, nothing was attempted."""
    return base.Verdict(
        message_id,
        "failed",
        reason="contenterror",
        hard=False,
        detail=f"the message could not be built: {exc}",
    )


def judge(a: smtp.Attempt) -> base.Verdict:
    """What one SMTP attempt means for its message.

    - 2xx: ``sent`` through a relay (with the relay's id for the message, when its reply names
      one), ``delivered`` by the recipient's MX;
    - 4xx: ``deferred``, the reason from the server's words and codes, with the wait it asked;
    - 5xx: ``bounced``, the reason and hard or soft from its words and codes;
    - no reply at all (a timeout, a refused or dropped connection, DNS trouble): ``deferred`` as
      ``networkerror`` (``failedstarttls`` for a failed TLS handshake), in the words of what
      happened; it only becomes ``expired`` when the dispatcher gives up retrying;
    - permanent without a reply (a null MX, a domain that does not exist, an address the
      server cannot take): ``failed``, Postwarden's own refusal, by its enhanced code.
    """
    evidence = base.Evidence(a.started_at, a.duration_ms, a.via, a.remote, a.transcript)
    detail = f"{a.code} {a.text}" if a.code else a.text
    if a.outcome == "accepted":
        relayed = a.via == "relay"
        return base.Verdict(
            a.message_id,
            "sent" if relayed else "delivered",
            code=a.enhanced,
            reply_code=a.code,
            detail=detail,
            provider_message_id=queue_id(a.text) if relayed else None,
            evidence=evidence,
        )
    code = a.enhanced or (str(a.code) if a.code else None)
    if a.outcome == "temporary":
        if a.code is None:  # our own words: the classifier reads those of remote servers
            reason = "failedstarttls" if a.text.startswith("TLS ") else "networkerror"
        else:
            reason = classify.classify(a.text, status=a.enhanced, reply_code=a.code).reason
        return base.Verdict(
            a.message_id,
            "deferred",
            reason=reason,
            hard=False,
            code=code,
            reply_code=a.code,
            detail=detail,
            retry_after=classify.retry_after(a.text),
            evidence=evidence,
        )
    verdict = classify.classify(a.text, status=a.enhanced, reply_code=a.code)
    return base.Verdict(
        a.message_id,
        "failed" if a.code is None else "bounced",
        reason=verdict.reason,
        hard=verdict.hard,
        code=code,
        reply_code=a.code,
        detail=detail,
        evidence=evidence,
    )


_ID = r"<?([^\s<>\[\]]+)>?"
_QUEUE_IDS = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        # Postfix, SendGrid, Mailjet, Brevo: "2.0.0 Ok: queued as 4XyZ1234" (or "as <id>")
        rf"\bqueued as:?\s+{_ID}",
        # Exim: "OK id=1tAbCd-000123-Xy"
        r"\bid=([^\s<>]+)",
        # Gmail and Google Workspace relay: "2.0.0 OK  1700000000 d9443c01a7336-1dd - gsmtp"
        r"\bok\s+\d+\s+(\S+)\s+-\s+gsmtp\b",
        # Exchange, Microsoft 365: "2.6.0 <id@host> [InternalId=...] Queued mail for delivery"
        r"^(?:\d\.\d{1,3}\.\d{1,3}\s+)?<([^\s<>]+)>",
        # Sendmail: "2.0.0 u3ABC123 Message accepted for delivery"
        r"^(?:\d\.\d{1,3}\.\d{1,3}\s+)?(\S+)\s+message accepted for delivery",
        # Amazon SES, SparkPost: "Ok 0100018c7a1b2c3d-...-000000": the whole reply is
        # "Ok" and the id (which holds a digit: "Ok queued" names nothing).
        r"^(?:\d\.\d{1,3}\.\d{1,3}\s+)?ok:?\s+<?((?=[^\s<>]*\d)[^\s<>]+)>?\s*$",
    )
)


def queue_id(text: str) -> str | None:
    """The id a relay's 250 reply to DATA gives the message, if it names one (see the forms
    above); at most :data:`base.PROVIDER_ID_MAX` characters."""
    for pattern in _QUEUE_IDS:
        found = pattern.search(text)
        if found is not None:
            value = found.group(1)
            return value if len(value) <= base.PROVIDER_ID_MAX else None
    return None
