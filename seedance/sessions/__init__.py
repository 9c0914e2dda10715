"""Sessions: conversation state that outlives a connection (history, pinned KV, replay logs) and its
durable snapshots (SQLite by default, Redis for several replicas)."""
