"""How long the GPU layer takes on the simulated NVML: enumeration, apply, status.

Prints figures; asserts nothing. Run from the repository root:

    python benchmarks/gpu_apply.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def main() -> None:
    from miso_cli.gpu import nvml
    from miso_cli.gpu.apply import apply_layout
    from miso_cli.gpu.layouts import enumerate_layouts
    from miso_cli.gpu.profiles import MODELS, model
    from miso_cli.gpu.sim.simnvml import SimNvml, new_state

    for key, gm in MODELS.items():
        t = time.perf_counter()
        n = len(enumerate_layouts(gm))
        n_all = len(
            enumerate_layouts(gm, maximal=False, include_me=True, include_double_memory=True)
        )
        ms = (time.perf_counter() - t) * 1000
        print(f"enumerate {key:11s}: {n:3d} maximal, {n_all:4d} with variants, {ms:7.1f} ms")

    layouts = enumerate_layouts(model("a100-40gb"))
    state = new_state("a100-40gb")
    state["gpus"][0]["mig_current"] = state["gpus"][0]["mig_pending"] = True
    sim = SimNvml(nvml.pynvml, state=state)
    drv = nvml.Driver(sim, simulated=True)
    apply_layout(drv, 0, layouts[0])
    t = time.perf_counter()
    pairs = 0
    for a in layouts:
        apply_layout(drv, 0, a)
        for b in layouts:
            apply_layout(drv, 0, b)
            apply_layout(drv, 0, a)
            pairs += 1
    dt = time.perf_counter() - t
    calls = sum(sim.calls.values())
    print(
        f"in-memory: {pairs} layout pairs (A->B->A) in {dt:.2f} s, "
        f"{dt / (2 * pairs + len(layouts)) * 1000:.2f} ms per apply, {calls} NVML calls"
    )

    with tempfile.TemporaryDirectory() as tmp:
        fdrv = nvml.open_driver("sim:a100-40gb", Path(tmp))
        fdrv.set_mig_mode(0, True)
        t = time.perf_counter()
        for lay in layouts:
            apply_layout(fdrv, 0, lay)
        dt = time.perf_counter() - t
        print(
            f"state file: {len(layouts)} applies in {dt:.2f} s, "
            f"{dt / len(layouts) * 1000:.1f} ms per apply (locked atomic writes)"
        )
        t = time.perf_counter()
        for _ in range(20):
            fdrv.instances(0)
            fdrv.processes(0)
        print(f"state file: status read {(time.perf_counter() - t) / 20 * 1000:.1f} ms")
        fdrv.close()


if __name__ == "__main__":
    main()
