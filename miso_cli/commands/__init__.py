"""Use cases behind the commands: they return typed results and never print."""
