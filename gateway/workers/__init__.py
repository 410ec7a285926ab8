"""A node of several gateway processes (`[server] workers`): a supervisor binds the
listening sockets and starts the workers (`supervisor`), each a whole gateway on those
sockets (`worker`), tied to it by a local channel (`channel`)."""
