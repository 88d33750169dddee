"""Outbound delivery channels.

A channel takes messages that are already built (:class:`base.Outgoing`) and reports what the
remote side said about each one (:class:`base.AttemptResult`). ``base`` holds the contract;
``smtp`` is the SMTP implementation (relay or direct to MX).
"""

from __future__ import annotations
