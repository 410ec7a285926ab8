"""The conformance runner: checks an LPS (campaigns) or an operator (probe) and reports."""
