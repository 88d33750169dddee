"""The domain: pure rules with no I/O and no store (status machine, classifier, addresses,
tokens, machine detection), unit-tested without a database."""
