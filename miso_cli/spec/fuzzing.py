"""Every file miso reads, fed damaged: the promise is a named error, never a traceback.

A :class:`Target` is one input format (queue, plan, trace, catalog, profile CSV,
model, model sidecar, journal, simulated GPU state, apply record): a valid seed
file and the loader that reads it the way a command does. :func:`mutate` damages
a seed (a cell swapped for a hostile value, a line dropped or repeated, the text
cut short or nested deeply, random bytes); :func:`try_input` writes the result,
runs the loader and says whether it ended in anything but a return or a
:class:`~miso_cli.errors.MisoError`, or ran past its time.

Used by ``tests/test_fuzz.py`` (with hypothesis) and ``benchmarks/chaos.py``
(counts in the thousands). Only the loaders are imported lazily: heavy libraries
(scikit-learn) load only for the model targets.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miso_cli.errors import MisoError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

# Values that broke parsers before, or could: huge, tiny, not numbers, not text.
HOSTILE = [
    "",
    "0",
    "-1",
    "1e308",
    "-1e308",
    "1e-320",
    "nan",
    "inf",
    "-inf",
    "9" * 5000,
    "18446744073709551617",
    "1.5",
    "true",
    "null",
    "[]",
    "{}",
    "[[[[[[[[",
    '"',
    "'",
    "\\",
    "\x00",
    "\ufeff",
    "é",
    "💥",
    "a" * 10000,
    "mig_2g",
    "7g.40gb@99",
    "3g.20gb@-1:4",
    "SIGKILL",
    "1e3GiB",
    "-5s",
    "99999999999999999999h",
]


class Hang(Exception):
    """The loader ran past its time budget."""


@dataclass
class Target:
    """One input format: its file name, a valid seed, and how miso reads it."""

    name: str
    filename: str
    seed: Callable[[Path], bytes]  # given a scratch dir, the bytes of a valid file
    load: Callable[[Path, Path], object]  # (file, scratch dir) -> anything; raises on bad


@dataclass
class Outcome:
    target: str
    ok: bool  # returned, or raised a MisoError
    error: str | None = None  # the traceback when not ok
    hang: bool = False
    seconds: float = 0.0


# ------------------------------------------------------------ seeds


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _catalog_path(tmp: Path) -> Path:
    return EXAMPLES / "catalog.csv"


def _seed_queue(tmp: Path) -> bytes:
    return _read(EXAMPLES / "quickstart.toml")


def _load_queue(path: Path, tmp: Path) -> object:
    from miso_cli.spec.queue import load_queue

    return load_queue(path)


def _seed_plan(tmp: Path) -> bytes:
    doc = {"gpus": [{"index": 0, "layout": ["3g.20gb@0", "4g.20gb"]}]}
    return json.dumps(doc).encode()


def _load_plan(path: Path, tmp: Path) -> object:
    from miso_cli.gpu import apply as core

    plan = core.load_plan(path)
    drv = _sim_driver()
    for i, tokens in plan:
        if i < drv.device_count():
            core.resolve(drv, i, tokens, f"{path}: GPU {i}")
    return plan


def _seed_trace(tmp: Path) -> bytes:
    lines = (EXAMPLES / "trace.csv").read_bytes().splitlines(keepends=True)
    return b"".join(lines[:15])


def _load_trace(path: Path, tmp: Path) -> object:
    from miso_cli.sim.simulator import load_trace
    from miso_cli.spec.catalog import load_catalog

    return load_trace(path, load_catalog(_catalog_path(tmp)))


def _seed_catalog(tmp: Path) -> bytes:
    return _read(EXAMPLES / "catalog.csv")


def _load_catalog(path: Path, tmp: Path) -> object:
    from miso_cli.sim.simulator import load_trace
    from miso_cli.spec.catalog import load_catalog

    cat = load_catalog(path)
    # What a command does next with a catalog: read a trace against it.
    trace = tmp / "trace-for-catalog.csv"
    trace.write_bytes(_seed_trace(tmp))
    try:
        load_trace(trace, cat)
    except MisoError:
        pass
    return cat


def _load_profile_csv(path: Path, tmp: Path) -> object:
    from miso_cli.predict.data import read_profile_csv

    return read_profile_csv(path)


def _rows() -> list[dict[str, Any]]:
    out = []
    for line in (EXAMPLES / "catalog.csv").read_text().splitlines()[1:]:
        cells = line.split(",")
        try:
            m7, m4, m3, m2, m1, p100, p50, p14 = (float(c) if c else None for c in cells[1:9])
        except ValueError:
            continue
        mig = {k: v for k, v in ((7, m7), (4, m4), (3, m3), (2, m2), (1, m1)) if v}
        mps = {k: v for k, v in ((100, p100), (50, p50), (14, p14)) if v}
        if 7 in mig and mps:
            out.append({"workload": cells[0], "mps": mps, "mig": mig, "source": "fuzz"})
    return out


def _sidecar_doc(version: str) -> dict[str, Any]:
    from miso_cli.predict.persist import MODEL_FORMAT

    rows = _rows()
    return {
        "metadata": {
            "format": MODEL_FORMAT,
            "sklearn_version": version,
            "gpu_model": "a100-40gb",
            "driver": "fuzz",
            "params": {"estimators": ["ridge"], "random_state": 0, "min_target_rows": 2},
            "estimators": {"mig_4g": "ridge", "mig_3g": "ridge", "mig_2g": "ridge"},
            "cv": {"mig_4g": {"sigma_log": 0.1}, "mig_3g": {"sigma_log": 0.2}},
        },
        "rows": [
            {
                "workload": r["workload"],
                "mps": {str(k): v for k, v in r["mps"].items()},
                "mig": {str(k): v for k, v in r["mig"].items()},
                "source": "fuzz",
            }
            for r in rows
        ],
    }


def _seed_sidecar(tmp: Path) -> bytes:
    return json.dumps(_sidecar_doc("0.0-not-this-one")).encode()


def _load_sidecar(path: Path, tmp: Path) -> object:
    """The sidecar of a model saved by another scikit-learn: the refit path."""
    import os

    from miso_cli.predict.persist import load_model

    model = path.with_name("model.joblib")
    model.write_bytes(b"never unpickled: the versions differ")
    os.chmod(model, 0o600)
    os.chmod(path, 0o600)
    return load_model(model)


def _seed_model(tmp: Path) -> bytes:
    return b"\x80\x04\x95" + bytes(range(40))


def _load_model(path: Path, tmp: Path) -> object:
    """Model bytes that are not a model, with a sidecar of this scikit-learn."""
    import os

    from miso_cli.predict.persist import load_model, sidecar, sklearn_version

    side = sidecar(path)
    side.write_text(json.dumps(_sidecar_doc(sklearn_version())))
    os.chmod(side, 0o600)
    os.chmod(path, 0o600)
    return load_model(path)


def _seed_journal(tmp: Path) -> bytes:
    from miso_cli.runtime.journal import Journal
    from miso_cli.spec.queue import load_queue

    state = tmp / "seed-state"
    j = Journal.create(
        state,
        load_queue(EXAMPLES / "quickstart.toml"),
        gpu_spec="sim:a100-40gb",
        policy="miso",
        policy_options={},
        options={},
        now=0.0,
    )
    return (j.run_dir / "journal.json").read_bytes()


def _load_journal(path: Path, tmp: Path) -> object:
    from miso_cli.runtime.journal import Journal
    from miso_cli.runtime.state import atomic_write_text

    state = tmp / "journal-state"
    run = state / "runs" / "r1"
    run.mkdir(parents=True, exist_ok=True)
    (run / "journal.json").write_bytes(path.read_bytes())
    atomic_write_text(state / "runs" / "latest", "r1\n")
    j = Journal.open(state)
    for rec in j.jobs.values():
        _ = (rec.active, rec.terminal, len(rec.attempts))
    return j


def _seed_sim_state(tmp: Path) -> bytes:
    from miso_cli.gpu.sim.simnvml import new_state

    return json.dumps(new_state("a100-40gb")).encode()


def _load_sim_state(path: Path, tmp: Path) -> object:
    from miso_cli.gpu import nvml as nvml_mod
    from miso_cli.gpu.nvml import Driver
    from miso_cli.gpu.sim.simnvml import SimNvml, SimStateError, new_state

    try:
        lib = SimNvml(nvml_mod.pynvml, state_path=path, state=new_state("a100-40gb"))
    except SimStateError:
        raise
    drv = Driver(lib, simulated=True, sim_state_path=path)
    n = drv.device_count()
    for i in range(min(n, 4)):
        info = drv.gpu(i)
        if info.mig_current:
            drv.instances(i)
        drv.processes(i)
    return n


def _seed_intent(tmp: Path) -> bytes:
    from miso_cli.gpu.layouts import enumerate_layouts
    from miso_cli.gpu.profiles import model

    lays = enumerate_layouts(model("a100-40gb"))
    doc = {
        "version": 1,
        "gpu_index": 0,
        "gpu_uuid": None,
        "pid": 1,
        "started_at": 0,
        "before": lays[0].to_json(),
        "wanted": lays[5].to_json(),
    }
    return json.dumps(doc).encode()


def _load_intent(path: Path, tmp: Path) -> object:
    from miso_cli.gpu.apply import recover_unfinished

    drv = _sim_driver(mig=True)
    return recover_unfinished(drv, 0, path)


def _sim_driver(mig: bool = False) -> Any:
    from miso_cli.gpu import nvml as nvml_mod
    from miso_cli.gpu.nvml import Driver
    from miso_cli.gpu.sim.simnvml import SimNvml, new_state

    state = new_state("a100-40gb")
    state["gpus"][0]["mig_current"] = state["gpus"][0]["mig_pending"] = mig
    return Driver(SimNvml(nvml_mod.pynvml, state=state), simulated=True)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("queue", "queue.toml", _seed_queue, _load_queue),
        Target("plan", "plan.json", _seed_plan, _load_plan),
        Target("trace", "trace.csv", _seed_trace, _load_trace),
        Target("catalog", "catalog.csv", _seed_catalog, _load_catalog),
        Target("csv", "profiles.csv", _seed_catalog, _load_profile_csv),
        Target("model", "model.joblib", _seed_model, _load_model),
        Target("sidecar", "model.joblib.json", _seed_sidecar, _load_sidecar),
        Target("journal", "journal.json", _seed_journal, _load_journal),
        Target("sim_state", "sim.json", _seed_sim_state, _load_sim_state),
        Target("intent", "gpu.apply.json", _seed_intent, _load_intent),
    )
}


# ------------------------------------------------------------ damage


def mutate(seed: bytes, rng: random.Random) -> bytes:
    """One to three kinds of damage to ``seed``."""
    data = seed
    for _ in range(rng.randint(1, 3)):
        data = _ONE[rng.randrange(len(_ONE))](data, rng)
    return data


def _swap_token(data: bytes, rng: random.Random) -> bytes:
    text = data.decode("utf-8", errors="replace")
    import re

    spans = [m.span() for m in re.finditer(r'[^,\s"=\[\]{}:]+', text)]
    if not spans:
        return data
    a, b = spans[rng.randrange(len(spans))]
    return (text[:a] + rng.choice(HOSTILE) + text[b:]).encode("utf-8", errors="surrogatepass")


def _drop_line(data: bytes, rng: random.Random) -> bytes:
    lines = data.splitlines(keepends=True)
    if len(lines) > 1:
        del lines[rng.randrange(len(lines))]
    return b"".join(lines)


def _repeat_line(data: bytes, rng: random.Random) -> bytes:
    lines = data.splitlines(keepends=True)
    if not lines:
        return data
    k = rng.randrange(len(lines))
    return b"".join(lines[: k + 1] + [lines[k]] * rng.choice([1, 2, 500]) + lines[k + 1 :])


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data) + 1)] if data else data


def _nest(data: bytes, rng: random.Random) -> bytes:
    depth = rng.choice([50, 5000, 100000])
    if data[:1] in (b"{", b"["):
        return b"[" * depth + data + b"]" * depth
    return data + b"\n" + b"[" * depth


def _noise(data: bytes, rng: random.Random) -> bytes:
    k = rng.randrange(len(data) + 1)
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return data[:k] + junk + data[k:]


def _flip_json_types(data: bytes, rng: random.Random) -> bytes:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return data
    nasty: list[Any] = [None, [], {}, "x", -1, 1e308, 10**30, True, float("nan")]

    def walk(x: Any) -> Any:
        if rng.random() < 0.08:
            return rng.choice(nasty)
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return json.dumps(walk(doc)).encode()


def _random_bytes(data: bytes, rng: random.Random) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))


_ONE: list[Callable[[bytes, random.Random], bytes]] = [
    _swap_token,
    _swap_token,
    _swap_token,
    _drop_line,
    _repeat_line,
    _truncate,
    _nest,
    _noise,
    _flip_json_types,
    _flip_json_types,
    _random_bytes,
]


# ------------------------------------------------------------ trying


@contextmanager
def _budget(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` after ``seconds`` (main thread only; elsewhere no limit)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def try_input(target: Target, data: bytes, tmp: Path, *, budget_s: float = 30.0) -> Outcome:
    """Write ``data`` as ``target``'s file in ``tmp`` and read it as miso would."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / target.filename
    path.write_bytes(data)
    t0 = time.monotonic()
    try:
        with _budget(budget_s):
            target.load(path, tmp)
    except MisoError:
        pass
    except Hang:
        return Outcome(target.name, False, "hang", True, time.monotonic() - t0)
    except Exception:
        return Outcome(target.name, False, traceback.format_exc(), False, time.monotonic() - t0)
    return Outcome(target.name, True, None, False, time.monotonic() - t0)


def seeds(tmp: Path) -> dict[str, bytes]:
    """The valid seed of every target (each must load cleanly)."""
    return {name: t.seed(tmp) for name, t in TARGETS.items()}
