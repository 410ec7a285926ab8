"""What you may open: mailboxes, delegations, directory entries and audit events."""
