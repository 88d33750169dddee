"""A channel that reaches nobody, for tests of what is generic (the dispatcher, the recorder,
the pages): it builds every message as its address, and its verdicts follow the address.

The recipient's local part, up to a ``-``, names the verdict (``sent-1@x.test`` is sent):

===============  ==============================================================================
``sent``         ``sent``, with the provider id ``fake-<message id>``
``deferred``     ``deferred`` (``networkerror``); ``deferred30`` asks for 30 s before the retry
``bounced``      ``bounced``, ``userunknown``, hard
``soft``         ``bounced``, ``mailboxfull``, soft
``failed``       ``failed`` (``contenterror``)
``unbuildable``  not built: a ``failed`` verdict from the build, nothing attempted
anything else    ``delivered``
===============  ==============================================================================
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import Connection

from postwarden.outbound.channels import base
from postwarden.store import queue

_RULE = re.compile(r"^(sent|deferred|bounced|soft|failed|unbuildable)(\d*)(?:-|@|$)")
_BOUNCES = {
    "bounced": ("userunknown", True, "5.1.1", "550 5.1.1 no such user"),
    "soft": ("mailboxfull", False, "5.2.2", "552 5.2.2 mailbox full"),
}


class FakeChannel:
    """Records what it is handed: :attr:`built` (claimed ids) and :attr:`sent` (messages)."""

    def __init__(self, name: str = "email", *, source: str = "fake", via: str = "fake") -> None:
        self.name = name
        self.source = source
        self.via = via
        self.built: list[int] = []
        self.sent: list[base.Outgoing[str]] = []
        self.closed = False

    def build(
        self, conn: Connection, claimed: Sequence[queue.Claimed]
    ) -> list[base.Outgoing[str] | base.Verdict]:
        out: list[base.Outgoing[str] | base.Verdict] = []
        for c in claimed:
            self.built.append(c.id)
            if _rule(c.to_addr)[0] == "unbuildable":
                out.append(
                    base.Verdict(
                        c.id, "failed", reason="contenterror", hard=False, detail="cannot build"
                    )
                )
            else:
                out.append(base.Outgoing(c.id, c.to_addr, c.to_addr, f"kept {c.id}".encode()))
        return out

    async def send(self, batch: Sequence[base.Outgoing[str]]) -> list[base.Verdict]:
        self.sent.extend(batch)
        return [self.verdict(o) for o in batch]

    def verdict(self, o: base.Outgoing[str]) -> base.Verdict:
        rule, number = _rule(o.to)
        evidence = base.Evidence(datetime.now(UTC), 1, self.via, "fake:0", f"{self.name} -> {o.to}")
        mid = o.message_id
        if rule == "sent":
            return base.Verdict(
                mid, "sent", detail="taken", provider_message_id=f"fake-{mid}", evidence=evidence
            )
        if rule == "deferred":
            return base.Verdict(
                mid,
                "deferred",
                reason="networkerror",
                hard=False,
                detail="timed out",
                retry_after=float(number) if number else None,
                evidence=evidence,
            )
        if rule in _BOUNCES:
            reason, hard, code, words = _BOUNCES[rule]
            return base.Verdict(
                mid,
                "bounced",
                reason=reason,
                hard=hard,
                code=code,
                reply_code=int(words[:3]),
                detail=words,
                evidence=evidence,
            )
        if rule == "failed":
            return base.Verdict(
                mid,
                "failed",
                reason="contenterror",
                hard=False,
                detail="refused",
                evidence=evidence,
            )
        return base.Verdict(mid, "delivered", detail="delivered", evidence=evidence)

    async def aclose(self) -> None:
        self.closed = True


def _rule(address: str) -> tuple[str | None, str]:
    found = _RULE.match(address.lower())
    return (found.group(1), found.group(2)) if found else (None, "")
