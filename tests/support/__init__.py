"""What many test files share: SASL payloads, ports, metrics, running stacks, logins."""
