"""Inputs: queue files, catalogs, traces, stored profiles."""
