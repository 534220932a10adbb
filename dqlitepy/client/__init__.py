"""The client side of dqlitepy: the sqlite3-compatible driver and what it is built on."""
