"""What many test files share: SASL payloads, ports, metrics, running stacks, logins, and
the IMAP engine on bytes over an in-memory store (`engine`, `memory_store`)."""
