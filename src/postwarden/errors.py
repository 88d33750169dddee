"""Postwarden's exceptions; each one's docstring is its default message.

PostwardenError
├── ConfigError
├── StoreError
│   ├── NotFound
│   └── Conflict            (the action does not apply to the message as it is now)
├── InvalidInput            (a request the API refuses with 4xx: nothing is stored)
└── InvalidTransition       (an event the status machine refuses: a user action too late)

Third-party exceptions are mapped only at the adapter boundaries (channels, store).
"""

from __future__ import annotations


class PostwardenError(Exception):
    """Postwarden failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__ or type(self).__name__)

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(PostwardenError):
    """The configuration is invalid."""


class StoreError(PostwardenError):
    """The database refused the operation."""


class NotFound(StoreError):
    """Not found."""


class Conflict(StoreError):
    """The action does not apply in the current state."""


class InvalidInput(PostwardenError):
    """The request is invalid."""


class InvalidTransition(PostwardenError):
    """The message's status does not allow this."""
