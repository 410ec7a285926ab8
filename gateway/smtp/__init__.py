"""SMTP submission: AUTH with PSC tokens (aiosmtpd hooks), sender rules, relay."""
