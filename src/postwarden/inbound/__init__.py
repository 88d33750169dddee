"""Inbound: what the recipient's side tells us (bounce mails, complaints, tracking hits) is
matched to its message and recorded."""
