"""The historic web services served by the gateway over whatever platform holds the BAL,
so that LPS that never moved to the API LPS keep working when their mailbox moves."""
