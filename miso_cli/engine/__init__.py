"""The scheduling engine: what ``miso run`` and ``miso simulate`` decide the same way.

No clock, no processes, no GPU: the drivers (:mod:`miso_cli.runtime.executor` on a wall
clock, :mod:`miso_cli.sim.simulator` on a virtual one) feed it facts and carry out
what it returns. :mod:`miso_cli.engine.core` is the engine itself (state, facts in,
actions out, the metrics); :mod:`miso_cli.engine.rules` the rules it applies,
:mod:`miso_cli.engine.measure` for measured progress.
"""
