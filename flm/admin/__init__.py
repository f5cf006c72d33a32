"""The admin HTTP API (Klein)."""
