"""Use cases behind the CLI: each takes parsed options and returns a typed result (no printing)."""
