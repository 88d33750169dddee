"""The SMS channel: texts built from stored content, sent through one provider (Twilio's
Messages API, Vonage's SMS API or an SMSC over SMPP 3.4), each reply already classified."""
