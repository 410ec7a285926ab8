"""Infrastructure the gateway and the mock operator share, owning no policy: TLS contexts
and development certificates, private files, structured logging, the ASGI and SMTP
listeners, task lifecycle, peer addresses, per-address caps and the login vocabulary
(`login`) that the IMAP engine, both fronts and the mock's platforms speak."""
