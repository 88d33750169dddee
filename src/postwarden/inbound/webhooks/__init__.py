"""Events that providers post to Postwarden over HTTP: verified, parsed, matched, recorded."""
