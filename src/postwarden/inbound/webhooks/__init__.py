"""Provider webhooks: receipts and replies that providers post to Postwarden.

Each module verifies a request (signature, freshness, replay) and turns it into
:class:`postwarden.domain.receipts.Receipt` or :class:`~postwarden.domain.receipts.Reply`
values; the HTTP routes (web) and the recording (store.recorder) use them.
"""
