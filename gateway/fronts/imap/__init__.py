"""The API LPS IMAP front: login, then a relay to the backend or a session the engine
serves over the backend's store; rights and audit on every command."""
