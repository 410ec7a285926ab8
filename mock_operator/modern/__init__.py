"""The mock operator's modern platform: a SQLite mail store served over IMAP and SMTP."""
