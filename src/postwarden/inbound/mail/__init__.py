"""Inbound mail: bounces, delay and success notices, complaints and auto-replies."""

from __future__ import annotations
