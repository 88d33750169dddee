"""Email addresses: validation and the one normal form used for matching and suppression."""

from __future__ import annotations

import functools
import re
from email.utils import parseaddr

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from postwarden import errors


def normalize(address: str) -> str:
    """The form addresses are stored and compared in: IDNA domain, lower case."""
    local, _, domain = address.strip().rpartition("@")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        pass
    return f"{local}@{domain}".lower()


# Plain ASCII addresses the validator would certainly accept, checked without its full parse:
# dot-atom local part, LDH labels, alphabetic TLD. Anything else goes through email-validator.
_PLAIN = re.compile(
    r"(?![.])(?!.*[.]{2})[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}(?<![.])"
    r"@(?=.{4,253}$)(?:(?!-)[A-Za-z0-9-]{1,63}(?<!-)\.)+([A-Za-z]{2,63})"
)
_SPECIAL = frozenset(name for name in SPECIAL_USE_DOMAIN_NAMES if name != "test")


@functools.lru_cache(maxsize=4096)
def _special_use(domain: str) -> bool:
    labels = domain.lower().split(".")
    return any(".".join(labels[i:]) in _SPECIAL for i in range(len(labels)))


def plain(address: str) -> str | None:
    """The normal form of an address the fast path of :func:`check` accepts, else None (the
    address may still be valid: ask :func:`check`)."""
    if _PLAIN.fullmatch(address) and not _special_use(address.rpartition("@")[2]):
        return address.lower()
    return None


def check(address: str) -> str:
    """Validate an address (syntax only: no DNS; the RFC 2606 `.test` domain is allowed).

    Raises InvalidInput with the validator's own explanation.
    """
    if "\r" in address or "\n" in address:
        raise errors.InvalidInput("an address may not contain CR or LF")
    if _PLAIN.fullmatch(address) and not _special_use(address.rpartition("@")[2]):
        return address.lower()
    try:
        result = validate_email(
            address, check_deliverability=False, allow_smtputf8=True, test_environment=True
        )
    except EmailNotValidError as exc:
        raise errors.InvalidInput(f"{address!r} is not a valid email address: {exc}") from exc
    return normalize(result.normalized)


def check_mailbox(value: str) -> tuple[str, str]:
    """Validate ``Name <addr>`` or a bare address; return (display name, normal address)."""
    if "\r" in value or "\n" in value:
        raise errors.InvalidInput("an address may not contain CR or LF")
    name, addr = parseaddr(value)
    return name, check(addr or value)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]
