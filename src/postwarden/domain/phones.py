"""Phone numbers: validated and normalised to E.164 (``+15551234567``) with ``phonenumbers``.

Pure: no I/O. The region is the one assumed for numbers written without a country code (the
instance's or, later, the account's). Providers can only text mobiles, so where a mobile is
needed a number that libphonenumber knows to be something else (a landline, toll-free,
premium rate, ...) is refused with a plain reason; a type it cannot tell apart (North American
numbers are "fixed line or mobile") is accepted and left to the carrier.
"""

from __future__ import annotations

from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType

__all__ = ["Checked", "check"]

_NOT_MOBILE: dict[int, str] = {
    PhoneNumberType.FIXED_LINE: "a landline",
    PhoneNumberType.TOLL_FREE: "a toll-free number",
    PhoneNumberType.PREMIUM_RATE: "a premium-rate number",
    PhoneNumberType.SHARED_COST: "a shared-cost number",
    PhoneNumberType.UAN: "a company's universal access number",
    PhoneNumberType.VOICEMAIL: "a voicemail access number",
    PhoneNumberType.PAGER: "a pager",
}

_PARSE_REASONS: dict[int, str] = {
    NumberParseException.INVALID_COUNTRY_CODE: "its country code is unknown (write it as +CC...)",
    NumberParseException.NOT_A_NUMBER: "it is not a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "it is too short after the international prefix",
    NumberParseException.TOO_SHORT_NSN: "it is too short",
    NumberParseException.TOO_LONG: "it is too long",
}


@dataclass(frozen=True, slots=True)
class Checked:
    """A number as given, and either its E.164 form or the reason it was refused."""

    raw: str
    e164: str | None
    reason: str | None = None  # "…: it is too short", said to a person
    not_mobile: bool = False  # valid, but not a number that can receive texts

    @property
    def ok(self) -> bool:
        return self.e164 is not None


def check(raw: str, *, region: str = "US", mobile: bool = True) -> Checked:
    """Validate ``raw``; E.164 when valid (and a possible mobile, if ``mobile``)."""
    text = (raw or "").strip()
    if not text:
        return Checked(raw, None, "No phone number was given.")
    try:
        number = phonenumbers.parse(text, region.upper() if region else None)
    except NumberParseException as exc:
        why = _PARSE_REASONS.get(exc.error_type, "it could not be read")
        return Checked(raw, None, f"{text!r} is not a valid phone number: {why}.")
    if not phonenumbers.is_valid_number(number):
        where = phonenumbers.region_code_for_number(number) or f"+{number.country_code}"
        return Checked(raw, None, f"{text!r} is not a valid phone number in {where}.")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if mobile:
        kind = _NOT_MOBILE.get(phonenumbers.number_type(number))
        if kind:
            return Checked(raw, None, f"{e164} is {kind}: text messages only reach mobiles.", True)
    return Checked(raw, e164)
