"""Postwarden's benchmark suite: ``python -m bench`` (see README.md, "Benchmarks")."""

from __future__ import annotations
