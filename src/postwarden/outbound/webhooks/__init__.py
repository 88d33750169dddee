"""Webhooks out: the sender (claim due outbox rows, sign, post, record each attempt) and the
HTTP client every outgoing request of Postwarden's goes through (no SSRF)."""
