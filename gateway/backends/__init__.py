"""Where mailboxes live: the routing table and the clients of each kind of backend."""
