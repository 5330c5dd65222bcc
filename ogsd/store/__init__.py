"""What survives a restart: the SQLite schema and store, and best-effort persistence."""
