"""Refusing a webhook request seen before (a replay), within a time window.

In memory and per process: a replay sent to another API process, or after a restart, is
caught by the events' dedupe keys instead (recording is idempotent); this guard answers the
common case without touching the database, and says "replayed" in words.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

Refusal = Literal["unsigned", "forged", "stale", "replayed"]


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a webhook request was not accepted (nothing of it may be recorded)."""

    why: Refusal
    detail: str


@dataclass
class Replays:
    """Keys seen in the last ``window``; at most ``capacity`` kept (oldest forgotten)."""

    window: timedelta
    capacity: int = 100_000
    _seen: OrderedDict[str, datetime] = field(default_factory=OrderedDict)

    def first_time(self, key: str, now: datetime) -> bool:
        """True (and remember it) unless ``key`` was seen within the window."""
        while self._seen:
            oldest, when = next(iter(self._seen.items()))
            if when > now - self.window and len(self._seen) < self.capacity:
                break
            del self._seen[oldest]
        if key in self._seen:
            return False
        self._seen[key] = now
        return True
