"""Progress parsing on real libraries' output (see tests/data/progress/captured)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from miso_cli.runtime.progress import ProgressTracker

CAPTURED = Path(__file__).parent / "data" / "progress" / "captured"


@pytest.mark.parametrize(
    ("log", "kind", "step", "total"),
    [
        ("tqdm-4.70.log", "auto", 120, 120),
        ("tqdm-4.70.log", "tqdm", 120, 120),
        # the evaluation bar (6 batches) interleaves with training: it must not be followed
        ("hf-trainer-5.23.log", "auto", 40, 40),
        ("hf-trainer-5.23.log", "hf", 40, 40),
        # 3 epochs of 25 batches; the Rich bar shows "Epoch 2/2" (epochs counted from 0)
        ("lightning-2.6-rich.log", "auto", 75, 75),
        ("lightning-2.6-rich.log", "lightning", 75, 75),
        # the tqdm bar does not show the number of epochs: the total stays unknown
        ("lightning-2.6-tqdm.log", "auto", 75, None),
        ("lightning-2.6-tqdm.log", "lightning", 75, None),
        # 3 epochs of 57 steps, with ANSI colours and "\r" redraws
        ("keras-3.15-torch.log", "auto", 171, 171),
        ("keras-3.15-torch.log", "keras", 171, 171),
    ],
)
def test_final_progress_of_captured_output(
    log: str, kind: str, step: int, total: int | None
) -> None:
    tracker = ProgressTracker(log_path=CAPTURED / log, progress_file=None, kind=kind)
    tracker.poll(time.time())
    assert tracker.progress.step == step
    assert tracker.progress.total == total


def test_captured_output_read_in_pieces_gives_the_same_answer(tmp_path: Path) -> None:
    """A job's log grows while miso reads it: partial lines must not confuse the parser."""
    data = (CAPTURED / "keras-3.15-torch.log").read_bytes()
    log = tmp_path / "job.log"
    log.write_bytes(b"")
    tracker = ProgressTracker(log_path=log, progress_file=None, kind="auto")
    seen = []
    for cut in range(0, len(data), 97):
        with open(log, "ab") as fh:
            fh.write(data[cut : cut + 97])
        tracker.poll(time.time())
        if tracker.progress.step is not None:
            seen.append(tracker.progress.step)
    assert seen == sorted(seen), "progress went backwards while the log grew"
    assert seen[-1] == 171
