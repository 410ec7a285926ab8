"""Where mailboxes live: one `Backend` interface (`base`), one error family (`errors`),
the kinds behind it (`imap_smtp/`, `legacy_ws/`, built in `kinds`), the routing table
(`routing`) and the readiness probes (`probes`)."""
