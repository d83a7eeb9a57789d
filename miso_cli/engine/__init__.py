"""The scheduling engine: what ``miso run`` and ``miso simulate`` decide the same way.

No clock, no processes, no GPU: the drivers (:mod:`miso_cli.runtime.executor` on a wall
clock, :mod:`miso_cli.sim.simulator` on a virtual one) feed it facts and carry out
what it returns. See :mod:`miso_cli.engine.rules` for the decisions both make,
:mod:`miso_cli.engine.measure` for measured progress.
"""
