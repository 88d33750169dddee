"""Provider webhooks: what providers post to Postwarden over HTTP, verified, parsed, matched and
recorded: SMS receipts and replies (twilio, vonage) and email events of hosted providers (sns,
sendgrid, mailgun, postmark).

Each module verifies a request (signature, freshness, replay) before anything is read from it;
the HTTP routes (web) call them, and what they learn is recorded through store.recorder.
"""
