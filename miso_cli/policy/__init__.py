"""Scheduling policies: pure functions of facts to decisions, shared by run and simulate."""
