"""The API LPS listeners: who logs in (`login`: identify with psc_auth, authorise with
delegation, route), the IMAP front (`imap`) and the SMTP submission front (`smtp`), with
one reply table per protocol edge (`replies`)."""
