"""The PyTorch example scripts, on the CPU, where PyTorch is installed (skipped elsewhere)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from miso_cli.progress import ProgressTracker

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
