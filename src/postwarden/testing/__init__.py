"""Real servers on loopback for the demo, the tests and the benchmarks: a recipient-side SMTP
and DNS simulator, and the bounce corpus scoring. Never imported by the service itself."""
