"""The example training scripts: the PyTorch ones on the CPU, where PyTorch is installed
(skipped elsewhere), and the synthetic job of the simulated GPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from miso_cli.runtime.progress import ProgressTracker

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "train_resnet.py": ["--image-size", "32", "--batch-size", "2", "--classes", "4"],
    "train_transformer.py": [
        "--seq-len", "16", "--batch-size", "2", "--vocab", "50",
        "--d-model", "32", "--layers", "1", "--heads", "2",
    ],
}  # fmt: skip


def _run(script: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    argv = [sys.executable, str(ROOT / "examples" / script), "--device", "cpu", *TINY[script]]
    return subprocess.Popen(
        [*argv, "--log-every", "2", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("script", sorted(TINY))
def test_example_trains_and_reports_progress(script: str, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    progress_file = tmp_path / "progress.jsonl"
    proc = _run(script, "--steps", "6", env={"MISO_PROGRESS_FILE": str(progress_file)})
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    log = tmp_path / "job.log"
    log.write_text(out)
    tracker = ProgressTracker(log_path=log, progress_file=progress_file)
    tracker.poll(time.time())
    assert tracker.progress.step == 6


def test_resnet_checkpoints_on_signal_and_resumes(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    ckpt = tmp_path / "resnet.pt"
    proc = _run("train_resnet.py", "--steps", "100000", "--resume", str(ckpt))
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:  # wait until it trains, then ask it to save
        if line.startswith("step ") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "checkpoint saved" in out, out
    again = _run("train_resnet.py", "--steps", "1", "--resume", str(ckpt))
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and "resumed from" in out, out


# -- examples/sim_train.py: fits by the slice's real memory --------------------------------


def _sim_devices(cli, state_dir: Path, gpu: str, *profiles: str) -> tuple[dict[str, str], Path]:
    from miso_cli.gpu.nvml import open_driver

    code, _, err = cli("apply", "--gpu", gpu, *profiles)
    assert code == 0, err
    drv = open_driver(gpu, state_dir)
    try:
        return {m.profile: m.uuid for m in drv.instances(0)}, drv.sim_state_path
    finally:
        drv.close()


def _sim_train(device: str, state: Path, workload: str, *extra: str) -> tuple[int, str]:
    env = {"CUDA_VISIBLE_DEVICES": device, "MISO_SIM_STATE": str(state)}
    env.pop("MISO_PROGRESS_FILE", None)
    argv = [sys.executable, str(ROOT / "examples" / "sim_train.py"), "--workload", workload]
    proc = subprocess.run(
        [*argv, "--steps", "2", "--speedup", "1000", *extra],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=120,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def test_sim_train_fits_by_the_slices_memory_on_an_h100(cli, state_dir: Path) -> None:
    # On the A100 the catalog measured, toy-gpt_16 fit neither 2g.10gb nor 1g.5gb and
    # toy-bert_8 not 1g.5gb; an H100's 2g.20gb and 1g.10gb have the memory for them.
    devs, state = _sim_devices(cli, state_dir, "sim:h100-80gb", "2g.20gb", "1g.10gb")
    code, out = _sim_train(devs["2g.20gb"], state, "toy-gpt_16", "--memory-mb", "16384")
    assert code == 0 and "toy-gpt_16 on 2g.20gb" in out, out
    code, out = _sim_train(devs["1g.10gb"], state, "toy-bert_8", "--memory-mb", "8192")
    assert code == 0 and "toy-bert_8 on 1g.10gb: 520.0 ms/step" in out, out
    code, out = _sim_train(devs["1g.10gb"], state, "toy-gpt_16")  # about 15 GB: too big
    assert code == 1 and "out of memory" in out and "1g.10gb" in out, out
    code, out = _sim_train(devs["2g.20gb"], state, "toy-mlp_32", "--memory-mb", "30000")
    assert code == 1 and "out of memory" in out, out


def test_sim_train_on_the_catalogs_a100_still_follows_its_empty_cells(cli, state_dir) -> None:
    devs, state = _sim_devices(cli, state_dir, "sim:a100-40gb", "2g.10gb", "1g.5gb")
    assert _sim_train(devs["2g.10gb"], state, "toy-gpt_16")[0] == 1
    assert _sim_train(devs["1g.5gb"], state, "toy-bert_8")[0] == 1
    code, out = _sim_train(devs["2g.10gb"], state, "toy-bert_8")
    assert code == 0 and "260.0 ms/step" in out, out


def test_catalog_step_time_on_a_slice_decides_by_memory() -> None:
    from miso_cli.gpu.profiles import MODELS
    from miso_cli.spec.catalog import load_catalog

    cat = load_catalog(ROOT / "examples" / "catalog.csv")
    gpt, mlp = cat["toy-gpt_16"], cat["toy-mlp_32"]
    # Between the A100's 2g.10gb it missed and its 3g.20gb it fit.
    assert 9856 < gpt.memory_need_mb() <= 19968
    h100 = MODELS["h100-80gb"]
    t2 = gpt.step_time_on(2, h100.by_slices(2).memory_mb)
    assert t2 is not None and 380.0 < t2 <= 380.0 * 3 / 2  # slower than 3g, at most by SMs
    assert gpt.step_time_on(3, h100.by_slices(3).memory_mb) == 380.0  # measured: as is
    assert gpt.step_time_on(1, h100.by_slices(1).memory_mb) is None
    assert mlp.step_time_on(1, 4864, need_mb=5000) is None
    assert mlp.step_time_on(1, 4864, need_mb=1000) == 58.0
