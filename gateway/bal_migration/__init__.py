"""Moving a BAL from one backend to another: copy, resume, incremental runs and verify
(issue 14). Named so, beside the Alembic `migrations/` folder of the schema.

* `plan`: the sans-I/O part, folder mapping and the diff of listings and checkpoints.
* `checkpoint`: the gateway's tables recording what was copied (resumable after kill -9).
* `copy`: `copy_bal` and `verify_bal`, over two `MailboxAccess`.
"""
