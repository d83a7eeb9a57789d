"""Progress parsing against real output formats, the progress file, step time and ETA."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from miso_cli.runtime.progress import LineParser, Progress, ProgressTracker, StepTimer

DATA = Path(__file__).parent / "data" / "progress"


def track(name: str, tmp_path: Path, **kw) -> ProgressTracker:
    log = tmp_path / "job.log"
    log.write_bytes((DATA / name).read_bytes())
    t = ProgressTracker(log, None, **kw)
    t.poll(1.0)
    return t


@pytest.mark.parametrize(
    "name, kind, step, total",
    [
        ("tqdm.log", "auto", 200, 200),
        ("tqdm.log", "tqdm", 200, 200),
        ("hf_trainer.log", "auto", 250, 375),  # the evaluation bar (63) is not followed
        ("hf_trainer.log", "hf", 250, 375),
        ("lightning.log", "auto", 2 * 50 + 20, None),  # epoch 2, batch 20 of 50
        ("lightning.log", "lightning", 120, None),
        ("keras2.log", "auto", 3 * 1875, 5 * 1875),
        ("keras2.log", "keras", 3 * 1875, 5 * 1875),
        ("keras3.log", "auto", 2 * 1875, 4 * 1875),
        ("keras2_tty.log", "auto", 300, 2 * 1875),
    ],
)
def test_builtin_formats(
    tmp_path: Path, name: str, kind: str, step: int, total: int | None
) -> None:
    p = track(name, tmp_path, kind=kind).progress
    assert p.step == step
    assert p.total == total


def test_queue_steps_override_total(tmp_path: Path) -> None:
    p = track("lightning.log", tmp_path, steps=500).progress
    assert p.step == 120 and p.total == 500 and p.fraction == pytest.approx(0.24)


def test_kind_filters(tmp_path: Path) -> None:
    assert track("keras2.log", tmp_path, kind="tqdm").progress.step is None
    assert track("tqdm.log", tmp_path, kind="keras").progress.step is None
    assert track("tqdm.log", tmp_path, kind="none").progress.step is None


def test_custom_regex() -> None:
    p = LineParser(regex=r"iter (?P<step>\d+) of (?P<total>\d+)")
    r = p.parse("INFO iter 42 of 1000 loss=1.2")
    assert r is not None and (r.step, r.total, r.source) == (42, 1000, "regex")
    unnamed = LineParser(regex=r"(\d+)/(\d+) done")
    r = unnamed.parse("7/9 done")
    assert r is not None and (r.step, r.total) == (7, 9)
    assert LineParser(regex=r"step=(\d+)").parse("nothing here") is None


def test_validation_bars_ignored() -> None:
    p = LineParser()
    assert p.parse("Validation DataLoader 0:  40%|████      | 8/20 [00:00<00:00, 40.0it/s]") is None
    assert p.parse("Sanity Checking DataLoader 0: 100%|██████████| 2/2 [00:00<00:00]") is None


def test_incremental_tail_and_partial_lines(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_text("")
    t = ProgressTracker(log, None)
    with open(log, "a") as fh:
        fh.write("\r  5%|▌         | 10/200 [00:01<00:19,  9.80it/s]")
    assert t.poll(1.0) and t.progress.step == 10
    with open(log, "a") as fh:  # a bar cut mid-write: nothing wrong is read
        fh.write("\r 10%|█         | 20/2")
    t.poll(2.0)
    assert t.progress.step == 10
    with open(log, "a") as fh:
        fh.write("00 [00:02<00:18,  9.80it/s]")
    assert t.poll(3.0) and t.progress.step == 20 and t.progress.total == 200
    offset = t.log_offset
    assert not t.poll(4.0) and t.log_offset == offset


def test_progress_file(tmp_path: Path) -> None:
    pf = tmp_path / "progress.jsonl"
    t = ProgressTracker(tmp_path / "none.log", pf)
    assert not t.poll(0.0)
    lines = [{"t": 100.0 + i, "step": 10.0 * i, "total": 100} for i in range(1, 6)]
    pf.write_text("".join(json.dumps(x) + "\n" for x in lines) + "garbage\n" + '{"t": 106')
    assert t.poll(200.0)
    assert t.progress.step == 50 and t.progress.total == 100 and t.progress.source == "file"
    assert t.progress.step_time_s == pytest.approx(0.1)
    assert t.progress.eta_s == pytest.approx(5.0)
    with open(pf, "a") as fh:
        fh.write(', "step": 60, "total": 100}\n')
    assert t.poll(201.0) and t.progress.step == 60


def test_step_timer_warmup_and_pauses() -> None:
    timer = StepTimer()
    assert timer.step_time_s() is None
    timer.add(0.0, 0)
    timer.add(30.0, 10)  # warm-up: 3 s a step (compilation)
    t = 30.0
    for i in range(1, 21):
        t += 1.0 if i != 10 else 60.0  # one long evaluation pause
        timer.add(t, 10 + 10 * i)
    assert timer.step_time_s() == pytest.approx(0.1)
    timer.add(t + 1, 5)  # restarted from an earlier checkpoint: new warm-up
    assert timer.step_time_s() is None


def test_step_timer_quantised_polls() -> None:
    # 2.5 steps/s observed once a second: 2 and 3 steps alternate.
    timer = StepTimer()
    step = 0.0
    for i in range(40):
        step = float(int(2.5 * i))
        timer.add(float(i), step)
    assert timer.step_time_s() == pytest.approx(0.4, rel=0.03)


def test_progress_json() -> None:
    p = Progress(step=50, total=200, step_time_s=0.5)
    d = p.to_json()
    assert d["fraction"] == 0.25 and d["throughput_steps_s"] == 2.0 and d["eta_s"] == 75.0
    assert Progress().to_json()["eta_s"] is None


def test_report_helper_writes_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pf = tmp_path / "p.jsonl"
    monkeypatch.setenv("MISO_PROGRESS_FILE", str(pf))
    from miso_cli import report

    importlib.reload(report)
    for i in range(1, 101):
        report.step(i, 100)
    report.done()
    recs = [json.loads(x) for x in pf.read_text().splitlines()]
    assert recs[0]["step"] == 1 and recs[-1]["step"] == 100 and recs[-1]["total"] == 100
    assert len(recs) < 10  # rate-limited
    t = ProgressTracker(tmp_path / "x.log", pf)
    t.poll(0)
    assert t.progress.step == 100


def test_report_noop_without_miso(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MISO_PROGRESS_FILE", raising=False)
    from miso_cli import report

    importlib.reload(report)
    report.step(1, 2)
    report.done()
    assert report.checkpoint_dir() is None or isinstance(report.checkpoint_dir(), str)


def test_report_imports_stdlib_only() -> None:
    code = (
        "import sys; before = set(sys.modules); from miso_cli import report; "
        "new = set(sys.modules) - before; "
        "bad = [m for m in new if m.split('.')[0] not in ('miso_cli', 'signal', 'enum', "
        "'_signal')]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_report_stop_flag(tmp_path: Path) -> None:
    code = (
        "import os, signal, time; from miso_cli import report; report.step(1, 10); "
        "os.kill(os.getpid(), signal.SIGUSR1); time.sleep(0.05); print(report.stop_requested())"
    )
    env = {"MISO_CHECKPOINT_SIGNAL": "SIGUSR1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parent.parent,
    )
    assert out.stdout.strip() == "True", out.stderr


def test_transformer_example_bar_is_read_as_tqdm() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    try:
        from train_transformer import bar_line
    finally:
        sys.path.pop(0)
    r = LineParser().parse(bar_line(360, 3000, 10.0, 300))
    assert r is not None and (r.step, r.total) == (360, 3000)


def test_a_progress_file_that_is_a_symlink_is_not_read(tmp_path: Path) -> None:
    """The job owns the folder: a link it plants there (to a file root may read) is refused."""
    target = tmp_path / "elsewhere.jsonl"
    target.write_text(json.dumps({"t": 100.0, "step": 10.0, "total": 100}) + "\n")
    pf = tmp_path / "progress.jsonl"
    pf.symlink_to(target)
    t = ProgressTracker(tmp_path / "none.log", pf)
    assert not t.poll(200.0)
    assert t.progress.step is None or t.progress.step == 0
