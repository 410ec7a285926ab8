"""The gateway's HTTP surface: the `/v1` API (PSC bearer tokens), web pages, health."""
