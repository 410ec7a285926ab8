"""The historic platform (Mailiz web services, DOMAIN.md §4) as a gateway backend: the
web-service client, the rebuilding of messages as RFC 5322, and the UID mapping."""
