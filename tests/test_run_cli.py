"""``miso run`` through the CLI: exit codes, the JSON contract, nothing started on bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import parse_envelope

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "examples" / "sim_train.py"


def queue(tmp_path: Path, body: str) -> Path:
    q = tmp_path / "q.toml"
    q.write_text("version = 1\n" + body)
    return q


def job(name: str, steps: int = 40, **keys: object) -> str:
    cmd = [sys.executable, str(SIM), "--workload", "toy-mlp_32", "--steps", str(steps)]
    out = f'[[job]]\nname = "{name}"\ncommand = {json.dumps(cmd)}\nsteps = {steps}\n'
    return out + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())


def nothing_started(state_dir: Path) -> bool:
    return not (state_dir / "runs").exists()


def test_bad_queue_is_bad_input_and_starts_nothing(cli, tmp_path: Path, state_dir: Path) -> None:
    q = queue(tmp_path, job("a") + job("a"))
    code, out, err = cli("run", str(q), "--gpu", "sim:a100-40gb", "--json")
    assert code == 3
    env = parse_envelope(out)
    assert env["errors"][0]["code"] == "BAD_INPUT" and ":7:" in env["errors"][0]["message"]
    assert nothing_started(state_dir)
    assert "Traceback" not in err


def test_memory_no_slice_holds(cli, tmp_path: Path, state_dir: Path) -> None:
    q = queue(tmp_path, job("a") + job("b", memory="12GiB"))
    code, out, _ = cli(
        "run", str(q), "--gpu", "sim:a100-40gb", "--layout", "2g.10gb,2g.10gb,2g.10gb", "--json"
    )
    assert code == 3
    msg = parse_envelope(out)["errors"][0]["message"]
    assert f"{q}:10:" in msg and "memory" in msg and "2g.10gb" in msg
    assert nothing_started(state_dir)
    code, _, err = cli("run", str(q), "--gpu", "sim:a100-40gb", "--layout", "7g.40gb")
    assert code == 0, err


@pytest.mark.parametrize(
    "args, words",
    [
        (["--layout", "5g.30gb"], "--layout"),
        (["--layout", "4g.20gb,4g.20gb"], "does not fit"),
        (["--policy", "nope"], "unknown policy"),
        (["--hang-timeout", "soon"], "--hang-timeout"),
        (["--speedup", "0"], "--speedup"),
        (["--policy", "nopart", "--layout", "7g.40gb"], "--layout"),
    ],
)
def test_bad_options(cli, tmp_path: Path, state_dir: Path, args: list[str], words: str) -> None:
    q = queue(tmp_path, job("a"))
    code, out, err = cli("run", str(q), "--gpu", "sim:a100-40gb", *args)
    # issue-15b: a layout that names no profile or does not fit is BAD_INPUT, as in apply
    bad_layout = args[0] == "--layout" and words in ("--layout", "does not fit")
    assert code == (3 if bad_layout else 2), err
    assert words in err
    assert nothing_started(state_dir)


def test_missing_queue_and_nothing_to_resume(cli, tmp_path: Path) -> None:
    code, _, err = cli("run", "--gpu", "sim:a100-40gb")
    assert code == 2 and "queue" in err
    code, _, err = cli("run", str(tmp_path / "none.toml"), "--gpu", "sim:a100-40gb")
    assert code == 3 and "cannot read" in err
    code, _, err = cli("run", "--resume", "--gpu", "sim:a100-40gb")
    assert code == 2 and "no run to resume" in err


def test_json_contract_and_summary(cli, tmp_path: Path, state_dir: Path) -> None:
    q = queue(tmp_path, job("a", 30) + job("b", 30, priority=2))
    code, out, err = cli(
        "run", str(q), "--gpu", "sim:a100-40gb", "--speedup", "50", "--policy", "nopart", "--json"
    )
    assert code == 0, err
    lines = [json.loads(ln) for ln in out.splitlines() if ln.strip()]
    assert all("event" in e for e in lines[:-1])
    env = parse_envelope(out)
    assert env["command"] == "run" and env["status"] == "ok"
    data = env["data"]
    jobs = {j["name"]: j for j in data["jobs"]}
    assert [j["name"] for j in data["jobs"]] == ["a", "b"]
    assert jobs["b"]["queue_s"] <= jobs["a"]["queue_s"]  # higher priority first on nopart
    for j in jobs.values():
        assert j["state"] == "finished" and j["slice"] is None and j["gpu"] == 0
        assert j["completion_s"] >= j["run_s"] > 0 and j["retries"] == 0
        assert j["steps"] == 30
    assert set(data["summary"]) >= {"makespan_s", "mean_jct_s", "slice_utilisation"}
    report = json.loads(Path(data["report_file"]).read_text())
    assert report["jobs"] == data["jobs"]
    # resuming a finished run reports it again and starts nothing
    code, out, _ = cli("run", "--resume", "--json")
    assert code == 0 and parse_envelope(out)["data"]["run_id"] == data["run_id"]


def test_human_summary(cli, tmp_path: Path) -> None:
    q = queue(tmp_path, job("only", 20))
    code, out, err = cli("run", str(q), "--gpu", "sim:a100-40gb", "--speedup", "50")
    assert code == 0, err
    assert "only" in out and "finished" in out and "makespan" in out
    assert "only: started on GPU 0" in err  # plain lines without a terminal


def test_quickstart_example_runs(cli, state_dir: Path) -> None:
    code, out, err = cli(
        "run",
        str(ROOT / "examples" / "quickstart.toml"),
        "--gpu",
        "sim:a100-40gb",
        "--layout",
        "3g.20gb,2g.10gb,2g.10gb",
        "--speedup",
        "40",
        "--json",
    )
    assert code == 0, err
    assert {j["state"] for j in parse_envelope(out)["data"]["jobs"]} == {"finished"}
