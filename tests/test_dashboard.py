"""The live view draws a typed snapshot of the run, not the executor's internals."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from miso_cli.operate.dashboard import render_snapshot
from miso_cli.runtime.snapshot import GpuRow, JobRow, RunSnapshot


def _text(snap: RunSnapshot) -> str:
    out = io.StringIO()
    Console(file=out, width=140, color_system=None).print(render_snapshot(snap))
    return out.getvalue()


def test_the_live_view_from_a_snapshot() -> None:
    snap = RunSnapshot(
        "run-1",
        "miso+",
        75.0,
        [
            GpuRow(0, "A100", "mig", "4g.20gb+3g.20gb"),
            GpuRow(1, "A100", "mps", "whole GPU", "profiling at 50% (level 2/3)"),
        ],
        [
            JobRow(
                "a",
                "running",
                "0:4g.20gb",
                progress={"step": 10, "total": 40, "fraction": 0.25, "eta_s": 30},
                journal_state="running",
                cpu_percent=99.0,
                rss_mb=120.0,
            ),
            JobRow("b", "profiling", "1:mps", journal_state="running"),
            JobRow("c", "not yet", "-", journal_state="waiting"),
        ],
    )
    text = _text(snap)
    assert (
        "miso run run-1 | policy miso+ | 1m15s" in text or "miso run run-1 | policy miso+" in text
    )
    assert "2 running, 1 waiting" in text
    for part in (
        "4g.20gb+3g.20gb",
        "profiling at 50%",
        "0:4g.20gb",
        "not yet",
        "25%",
        "99%",
        "120M",
    ):
        assert part in text, part


def test_the_executor_shows_itself_as_a_snapshot(tmp_path: Path) -> None:
    from miso_cli.policy.simple import NoPart
    from miso_cli.runtime.executor import Executor
    from miso_cli.runtime.journal import Journal
    from miso_cli.spec.queue import parse_queue

    (tmp_path / "t.py").write_text("")
    job = '[[job]]\nname = "{}"\ncommand = ["python", "t.py"]\n'
    journal = Journal.create(
        tmp_path / "state",
        parse_queue(
            "version = 1\n" + job.format("a") + job.format("b") + "arrival = 60\n",
            tmp_path / "q.toml",
        ),
        gpu_spec="sim:a100-40gb",
        policy="nopart",
        policy_options={},
        options={},
        now=1000.0,
    )
    journal.jobs["a"].state, journal.jobs["a"].gpu = "running", 0
    ex = Executor(None, NoPart(), journal, clock=lambda: 1010.0)
    ex._schedule_arrivals()
    snap = ex.snapshot()
    assert snap.elapsed_s == 10.0 and snap.policy == "nopart"
    assert [(j.name, j.state, j.where) for j in snap.jobs] == [
        ("a", "running", "0:whole"),
        ("b", "not yet", "-"),
    ]
    assert snap.counts() == {"running": 1, "waiting": 1}


def test_a_decision_is_a_line_with_its_reason() -> None:
    from miso_cli.operate.dashboard import describe

    why = "start a; a not profiled: its length is not known yet (starts on the prior, measured)"
    event = {"event": "decided", "gpu": 1, "mode": "mig", "jobs": ["a"], "reason": why}
    assert describe(event) == f"GPU 1: {why}"
    assert describe({**event, "reason": ""}) is None
