"""Postwarden: send notifications and tell operators what became of each one."""

from __future__ import annotations

__version__ = "0.1.0"
