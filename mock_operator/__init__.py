"""A whole MSSanté test operator on one laptop: mock Pro Santé Connect, platforms, directory."""
