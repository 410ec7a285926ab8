"""Loading the operator's directory (people, BAL, their backend and delegations) from the
national directory's MSSanté extraction (CSV) or a JSON file: `parse` (bytes in, records
and line-numbered errors out, no I/O), `plan` (what would change against the registry),
`apply` (one transaction, then the change events)."""
