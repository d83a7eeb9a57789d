"""The real-time backend of the engine: processes, the wall clock, the journal.

For now :mod:`miso_cli.runtime.executor` holds it; :mod:`miso_cli.runtime.snapshot` is what
it shows of itself to the live view.
"""
