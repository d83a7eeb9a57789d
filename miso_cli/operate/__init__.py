"""The operator's view of runs: submitting to a running run, listing runs, reports, timelines.

Everything here reads or writes a run's directory (see :mod:`miso_cli.runtime.journal`);
nothing here drives jobs. ``miso run`` calls :func:`miso_cli.operate.inbox.take_requests`
from its loop to pick up what ``miso submit``, ``miso cancel`` and ``miso priority`` left.
"""
