from __future__ import annotations

import pytest

from postwarden.domain import phones


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("+1 (202) 555-0100", "US", "+12025550100"),
        ("202-555-0100", "US", "+12025550100"),
        ("07911 123456", "GB", "+447911123456"),
        ("+33 6 12 34 56 78", "US", "+33612345678"),
        ("0151 12345678", "DE", "+4915112345678"),
    ],
)
def test_valid_numbers_become_e164(raw: str, region: str, e164: str) -> None:
    checked = phones.check(raw, region=region)
    assert checked.ok and checked.e164 == e164 and checked.reason is None


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("", "No phone number"),
        ("hello", "not a phone number"),
        ("+999 123", "country code is unknown"),
        ("+1 202", "not a valid phone number"),
        ("+1202555010000000000", "too long"),
        ("+1 099 555 0100", "not a valid phone number"),
    ],
)
def test_invalid_numbers_say_why(raw: str, words: str) -> None:
    checked = phones.check(raw, region="US")
    assert checked.e164 is None and not checked.ok and not checked.not_mobile
    assert words in (checked.reason or "")


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("+44 20 7946 0000", "a landline"),
        ("+1 800 555 0100", "a toll-free number"),
        ("+44 909 879 0000", "a premium-rate number"),
    ],
)
def test_non_mobiles_are_refused_when_a_mobile_is_needed(raw: str, kind: str) -> None:
    refused = phones.check(raw, mobile=True)
    assert refused.e164 is None and refused.not_mobile
    assert kind in (refused.reason or "") and "only reach mobiles" in (refused.reason or "")
    allowed = phones.check(raw, mobile=False)
    assert allowed.ok and allowed.e164 == raw.replace(" ", "")


def test_north_american_numbers_cannot_be_told_apart_and_pass() -> None:
    assert phones.check("+12025550100", mobile=True).ok
