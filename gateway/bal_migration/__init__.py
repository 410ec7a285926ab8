"""Moving a BAL from one backend to another: copy, resume, incremental runs and verify
(issue 14). Named so, beside the Alembic `migrations/` folder of the schema.

* `plan`: the sans-I/O part, folder mapping and the diff of listings and checkpoints.
* `checkpoint`: the gateway's tables recording what was copied (resumable after kill -9).
* `copy`: `copy_bal` and `verify_bal`, over two `MailboxAccess`.
* `jobs`: the coordinator (copy, cut-over, rollback, trailing sync); `gate` holds a BAL's
  writes; `hook` runs the operator's commands; `cli` is `lps-gateway migrate`.
* `carry`: the legacy front's historic ids follow a BAL between platforms it serves.
* `adopt` and `historic_match`: a BAL leaving the historic platform keeps that platform's
  own ids (exactly through its web services, paired through its IMAP otherwise).
"""
