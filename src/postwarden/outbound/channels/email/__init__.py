"""The email channel: each message's bytes (compose, tracking) and SMTP delivery."""
