"""The test handsets every loopback SMS provider answers for: a number, what becomes of a
text sent to it. Any other number is delivered."""

from __future__ import annotations

from collections import Counter
from typing import Literal

Fate = Literal[
    "delivered", "unknown", "unreachable", "filtered", "stop", "landline", "invalid",
    "throttled", "silent",
]  # fmt: skip

DELIVERED = "+12025550100"
UNKNOWN = "+12025550101"  # the number is not in service
UNREACHABLE_THEN_DELIVERED = "+12025550102"  # phone off at the first text, on for the next
FILTERED = "+12025550103"  # the carrier filters the text as spam
STOP = "+12025550104"  # delivered, then the recipient replies STOP
LANDLINE = "+12025550105"  # a landline the number plan could not tell from a mobile
INVALID = "+12025550106"  # the provider refuses the number when it is submitted
THROTTLED = "+12025550107"  # the provider throttles the first two submissions
SILENT = "+12025550108"  # sent; the carrier never confirms delivery

FATES: dict[str, Fate] = {
    DELIVERED: "delivered",
    UNKNOWN: "unknown",
    UNREACHABLE_THEN_DELIVERED: "unreachable",
    FILTERED: "filtered",
    STOP: "stop",
    LANDLINE: "landline",
    INVALID: "invalid",
    THROTTLED: "throttled",
    SILENT: "silent",
}


class Handsets:
    """Counts the texts each number got, so "unreachable then delivered" turns on its second
    text and a number that replied STOP is opted out afterwards."""

    def __init__(self) -> None:
        self.texts: Counter[str] = Counter()
        self.opted_out: set[str] = set()

    def fate(self, number: str) -> Fate:
        """What becomes of the next text to ``number`` (counting it)."""
        self.texts[number] += 1
        fate = FATES.get(number, "delivered")
        if fate == "unreachable" and self.texts[number] > 1:
            return "delivered"
        return fate
