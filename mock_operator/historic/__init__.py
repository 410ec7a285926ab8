"""The mock operator's historic platform: the Mailiz web services of DOMAIN.md §4."""
