"""The store: every line of SQL, over one SQLite file (schema, writer, outbox, deliveries)."""
