"""The mock Pro Santé Connect identity provider."""
