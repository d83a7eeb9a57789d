"""Labels of ``miso run`` that add up: summary times, retries, step times, help, exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console

from miso_cli.operate.dashboard import _scaled, paused_s, render_snapshot, render_summary
from tests.conftest import parse_envelope

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "examples" / "sim_train.py"


def _job(name: str, steps: int, *extra: str, **keys: object) -> str:
    cmd = [sys.executable, str(SIM), "--workload", "toy-mlp_32", "--steps", str(steps), *extra]
    out = f'[[job]]\nname = "{name}"\ncommand = {json.dumps(cmd)}\nsteps = {steps}\n'
    return out + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())


def test_the_summary_adds_up_queue_run_and_paused_to_the_jct() -> None:
    job = {
        "name": "a", "state": "finished", "gpu": 0, "slice": "3g.20gb",
        "queue_s": 0.4, "run_s": 9.2, "completion_s": 11.3, "retries": 0, "attempts": 2,
    }  # fmt: skip
    assert paused_s(job) == 11.3 - 0.4 - 9.2
    assert paused_s({**job, "completion_s": None}) is None
    report = {
        "run_id": "r1", "jobs": [job], "report_file": "report.json",
        "summary": {"makespan_s": 12.0, "mean_jct_s": 11.3, "slice_utilisation": 0.5,
                    "finished": 1, "failed": 0},
    }  # fmt: skip
    console = Console(record=True, width=160)
    render_summary(console, report)
    text = console.export_text()
    assert "paused" in text
    row = next(ln for ln in text.splitlines() if ln.strip().startswith("│ a") or " a " in ln)
    assert "0s" in row and "9s" in row and "2s" in row and "11s" in row


def test_live_step_times_are_in_the_event_lines_time() -> None:
    from miso_cli.runtime.snapshot import JobRow, RunSnapshot

    row = JobRow("a", "running", "0:3g.20gb", "running", {"step_time_s": 0.038, "step": 5})
    console = Console(record=True, width=160)
    console.print(render_snapshot(RunSnapshot("r1", "miso+", 3.0, [], [row], step_time_scale=10)))
    text = console.export_text()
    assert "380 ms" in text and "38 ms" not in text  # what the event lines say
    assert "catalog time, jobs run x10" in text
    console = Console(record=True, width=160)
    console.print(render_snapshot(RunSnapshot("r1", "miso+", 3.0, [], [row])))
    assert "38 ms" in console.export_text()  # a real GPU: wall time is GPU time
    assert _scaled(None, 10.0) is None


def test_retries_count_retries_made_not_failures(cli, tmp_path: Path) -> None:
    q = tmp_path / "q.toml"
    q.write_text(
        "version = 1\n"
        + _job("once", 5, "--fail-at", "1", "--fail-attempts", "99")
        + _job("again", 5, "--fail-at", "1", "--fail-attempts", "1", retries=1)
    )
    code, out, _ = cli(
        "run", str(q), "--gpu", "sim:a100-40gb", "--speedup", "100", "--policy", "nopart",
        "--json",
    )  # fmt: skip
    jobs = {j["name"]: j for j in parse_envelope(out)["data"]["jobs"]}
    assert jobs["once"]["state"] == "failed"
    assert jobs["once"]["retries"] == 0 and jobs["once"]["failures"] == 1
    assert jobs["again"]["state"] == "finished"
    assert jobs["again"]["retries"] == 1 and jobs["again"]["failures"] == 1
    assert code != 0


def test_run_help_names_the_real_default(cli) -> None:
    code, out, _ = cli("run", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "one job per whole GPU. " not in text.split("--policy")[0]
    assert "default miso+" in text


def test_a_bad_profile_name_is_the_same_error_in_run_and_apply(cli, tmp_path: Path) -> None:
    q = tmp_path / "q.toml"
    q.write_text("version = 1\n" + _job("a", 5))
    apply_code, _, _ = cli("apply", "--gpu", "sim:a100-40gb", "5g.99gb")
    run_code, _, err = cli("run", str(q), "--gpu", "sim:a100-40gb", "--layout", "5g.99gb")
    assert apply_code == run_code == 3
    assert "--layout" in err and "5g.99gb" in err


def test_run_says_which_model_predicts(cli, tmp_path: Path) -> None:
    q = tmp_path / "q.toml"
    q.write_text("version = 1\n" + _job("a", 20))
    code, out, err = cli("run", str(q), "--gpu", "sim:a100-40gb", "--speedup", "100", "--json")
    assert code == 0, err
    notes = [json.loads(ln) for ln in out.splitlines()[:-1] if '"note"' in ln]
    assert any(n["message"].startswith("predictor: the shipped a100-40gb prior") for n in notes)


def test_the_summary_is_not_cut_when_it_goes_to_a_pipe() -> None:
    job = {
        "name": "a-rather-long-job-name", "state": "finished", "gpu": 0, "slice": "3g.20gb",
        "queue_s": 0.4, "run_s": 9.2, "completion_s": 11.3, "retries": 0, "attempts": 2,
    }  # fmt: skip
    report = {
        "run_id": "r1", "jobs": [job], "report_file": "report.json",
        "summary": {"makespan_s": 12.0, "mean_jct_s": 11.3, "slice_utilisation": 0.5,
                    "finished": 1, "failed": 0},
    }  # fmt: skip
    console = Console(record=True, width=40, force_terminal=False)
    render_summary(console, report)
    text = console.export_text()
    assert "a-rather-long-job-name" in text and "finished" in text and "0:3g.20gb" in text
    assert "…" not in text
