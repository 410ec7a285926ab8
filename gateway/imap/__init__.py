"""IMAP4rev1 for the gateway and the mock operator: a sans-I/O codec and a server engine.

`syntax` holds the parsed forms shared by everything; `parser` turns client bytes into
command events; `response` turns replies into bytes, with the response codes of `codes`;
`client` parses a server's replies (to talk to backends); `message` computes ENVELOPE,
BODYSTRUCTURE and body sections; `engine` serves any `MailStore`, dispatching to
`mailboxes` (folder commands), `selected` (commands on the selected folder) and `fetch`.
No module here owns a socket except `transport`.
"""
