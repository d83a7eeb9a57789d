"""``miso submit`` / ``cancel`` / ``priority``: the inbox, its safety rules, the journal side."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from miso_cli.errors import BadInput, ExitCode, PermissionDenied
from miso_cli.operate import inbox
from miso_cli.operate.submit import command_queue_text, control, submit
from miso_cli.runtime.journal import Journal
from miso_cli.spec.queue import load_queue
from tests.conftest import parse_envelope

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "examples" / "sim_train.py"


def job(name: str, steps: int = 40, **keys: object) -> str:
    cmd = [sys.executable, str(SIM), "--workload", "toy-mlp_32", "--steps", str(steps)]
    out = f'[[job]]\nname = "{name}"\ncommand = {json.dumps(cmd)}\nsteps = {steps}\n'
    return out + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())


def write_queue(tmp_path: Path, body: str, name: str = "q.toml") -> Path:
    q = tmp_path / name
    q.write_text("version = 1\n" + body)
    return q


def make_run(tmp_path: Path, state_dir: Path, *names: str, pid: int | None = None) -> Journal:
    """A journal as ``miso run`` leaves it; ``pid`` is its miso (default: this process)."""
    q = write_queue(tmp_path, "".join(job(n) for n in names), "first.toml")
    j = Journal.create(
        state_dir,
        load_queue(q),
        gpu_spec="sim:a100-40gb",
        policy="nopart",
        policy_options={},
        options={},
    )
    if pid is not None:
        j.data["miso_pid"] = pid
        j.save()
    inbox.make_inbox(j.run_dir)
    return j


def dead_pid() -> int:
    import subprocess

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# --------------------------------------------------------------------------- the inbox files


def test_a_request_is_a_private_complete_file(tmp_path: Path, state_dir: Path) -> None:
    j = make_run(tmp_path, state_dir, "a")
    rid = inbox.write_request(j.run_dir, {"kind": "cancel", "jobs": ["a"]}, now=1000.0)
    files = os.listdir(inbox.inbox_dir(j.run_dir))
    assert files == [f"{rid}.json"]  # no temporary left
    path = inbox.inbox_dir(j.run_dir) / files[0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    body = json.loads(path.read_text())
    assert body["kind"] == "cancel" and body["submitted_at"] == 1000.0 and body["id"] == rid
    assert stat.S_IMODE(inbox.inbox_dir(j.run_dir).stat().st_mode) == 0o700
    good, bad = inbox.take_requests(j.run_dir)
    assert [r.names for r in good] == [["a"]] and bad == []
    # taking does not remove: the run journals first, then says done
    assert os.listdir(inbox.inbox_dir(j.run_dir)) == files
    inbox.done(j.run_dir, [rid])
    assert os.listdir(inbox.inbox_dir(j.run_dir)) == []


def test_requests_come_oldest_first(tmp_path: Path, state_dir: Path) -> None:
    j = make_run(tmp_path, state_dir, "a", "b")
    inbox.write_request(j.run_dir, {"kind": "cancel", "jobs": ["b"]}, now=2000.0)
    inbox.write_request(j.run_dir, {"kind": "cancel", "jobs": ["a"]}, now=1000.0)
    good, _ = inbox.take_requests(j.run_dir)
    assert [r.names for r in good] == [["a"], ["b"]]


def test_another_user_may_not_write_into_a_run(tmp_path: Path, state_dir: Path) -> None:
    j = make_run(tmp_path, state_dir, "a")
    owner = os.stat(j.run_dir).st_uid
    with pytest.raises(PermissionDenied, match="only its owner or root"):
        inbox.write_request(j.run_dir, {"kind": "cancel", "jobs": ["a"]}, euid=owner + 4242)
    assert os.listdir(inbox.inbox_dir(j.run_dir)) == []
    # the owner may, and so may root
    inbox.write_request(j.run_dir, {"kind": "cancel", "jobs": ["a"]}, euid=owner)
    if os.geteuid() == 0:
        inbox.write_request(j.run_dir, {"kind": "cancel", "jobs": ["a"]}, euid=0)


@pytest.mark.parametrize("how", ["symlink", "fifo", "other-owner", "huge", "not-json", "kind"])
def test_the_run_takes_no_untrusted_file(tmp_path: Path, state_dir: Path, how: str) -> None:
    j = make_run(tmp_path, state_dir, "a")
    d = inbox.inbox_dir(j.run_dir)
    target = d / "00000000000000001-evil.json"
    uid = None
    if how == "symlink":
        secret = tmp_path / "secret.json"
        secret.write_text(
            json.dumps({"version": 1, "kind": "cancel", "jobs": ["a"], "submitted_at": 1})
        )
        target.symlink_to(secret)
    elif how == "fifo":
        os.mkfifo(target)
    elif how == "other-owner":
        inbox.write_request(j.run_dir, {"kind": "cancel", "jobs": ["a"]})
        uid = os.geteuid() + 4242  # as if the run were another user's
    elif how == "huge":
        target.write_bytes(b" " * (inbox.MAX_REQUEST_BYTES + 1))
    elif how == "not-json":
        target.write_bytes(b"\xff\xfe")
    else:
        target.write_text(json.dumps({"version": 1, "kind": "rm -rf", "submitted_at": 1}))
    good, bad = inbox.take_requests(j.run_dir, uid=uid)
    assert good == [] and len(bad) == 1 and bad[0].reason


def test_a_submission_is_validated_again_by_the_run(tmp_path: Path, state_dir: Path) -> None:
    j = make_run(tmp_path, state_dir, "a")
    # written past the submit command's checks: a job whose program does not exist
    text = 'version = 1\n[[job]]\nname = "x"\ncommand = ["/no/such/program"]\n'
    inbox.write_request(
        j.run_dir, {"kind": "submit", "queue_path": str(tmp_path / "q.toml"), "queue_text": text}
    )
    inbox.write_request(
        j.run_dir, {"kind": "submit", "queue_path": "relative.toml", "queue_text": text}
    )
    good, bad = inbox.take_requests(j.run_dir)
    assert good == []
    assert "not found" in bad[0].reason and "absolute" in bad[1].reason


# --------------------------------------------------------------------------- into the journal


def test_absorb_adds_cancels_and_reprioritises(tmp_path: Path, state_dir: Path) -> None:
    j = make_run(tmp_path, state_dir, "a", "b", "c")
    j.jobs["b"].state = "running"
    j.save()
    q = write_queue(tmp_path, job("new1") + job("new2"))
    text = q.read_text()
    inbox.write_request(
        j.run_dir,
        {"kind": "submit", "queue_path": str(q), "queue_text": text, "priority": 3},
        now=1.0,
    )
    inbox.write_request(j.run_dir, {"kind": "cancel", "jobs": ["a", "b"]}, now=2.0)
    inbox.write_request(j.run_dir, {"kind": "priority", "jobs": ["c"], "priority": 9}, now=3.0)
    inbox.write_request(
        j.run_dir, {"kind": "submit", "queue_path": str(q), "queue_text": text}, now=4.0
    )
    got = inbox.absorb(j, now=50.0)
    assert got.arrived == ["new1", "new2"]
    assert got.cancel_running == ["b"] and got.reprioritised
    assert j.jobs["a"].state == "cancelled" and j.jobs["new1"].queued_at == 50.0
    specs = {s.name: s for s in j.queue.jobs}
    assert specs["new1"].priority == 3 and specs["c"].priority == 9
    log = j.data["requests"]
    assert [r["status"] for r in log] == ["taken", "taken", "taken", "rejected"]
    assert "in use" in log[3]["reason"]
    # journaled, then removed: a crash in between only removes them on the next look
    j.save()
    again = Journal.open(state_dir)
    got2 = inbox.absorb(again, now=60.0)
    assert not got2.arrived and len(again.data["requests"]) == 4
    assert os.listdir(inbox.inbox_dir(j.run_dir)) == []


# --------------------------------------------------------------------------- the commands


def test_submit_without_a_run_says_how_to_start_one(cli, tmp_path: Path) -> None:
    q = write_queue(tmp_path, job("a"))
    code, out, err = cli("submit", str(q), "--json")
    assert code == ExitCode.USAGE
    e = parse_envelope(out)["errors"][0]
    assert e["details"]["reason"] == "no_run" and "miso run" in e["hint"]
    assert "Traceback" not in err


def test_submit_to_a_finished_run_is_refused(cli, tmp_path: Path, state_dir: Path) -> None:
    j = make_run(tmp_path, state_dir, "a")
    j.status = "finished"
    j.save()
    code, _, err = cli("submit", str(write_queue(tmp_path, job("b"))))
    assert code == ExitCode.USAGE and "over" in err and "miso run" in err


def test_submit_a_queue_file(cli, tmp_path: Path, state_dir: Path) -> None:
    j = make_run(tmp_path, state_dir, "a")
    q = write_queue(tmp_path, job("b") + job("c"))
    code, out, err = cli("submit", str(q), "--priority", "4", "--json")
    assert code == 0, err
    data = parse_envelope(out)["data"]
    assert data["jobs"] == ["b", "c"] and data["run_id"] == j.run_id and data["live"]
    good, _ = inbox.take_requests(j.run_dir)
    assert [s.priority for s in good[0].jobs] == [4, 4]
    # the same names again (waiting in the inbox) and a name of the run are refused
    code, _, err = cli("submit", str(q))
    assert code == ExitCode.BAD_INPUT and "'b'" in err
    code, _, err = cli("submit", str(write_queue(tmp_path, job("a"), "dup.toml")))
    assert code == ExitCode.BAD_INPUT and "already has a job" in err


def test_submit_validates_like_a_queue_file(cli, tmp_path: Path, state_dir: Path) -> None:
    j = make_run(tmp_path, state_dir, "a")
    bad = write_queue(tmp_path, job("b") + "colour = 1\n")
    code, out, _ = cli("submit", str(bad), "--json")
    assert code == ExitCode.BAD_INPUT
    assert f"{bad}:" in parse_envelope(out)["errors"][0]["message"]
    assert os.listdir(inbox.inbox_dir(j.run_dir)) == []


def test_submit_one_job_from_the_command_line(cli, tmp_path: Path, state_dir: Path) -> None:
    j = make_run(tmp_path, state_dir, "a")
    code, out, err = cli(
        "submit",
        "--name",
        "tune",
        "--steps",
        "50",
        "--memory",
        "4GiB",
        "--checkpoint-signal",
        "USR1",
        "--",
        sys.executable,
        str(SIM),
        "--steps",
        "50",
    )
    assert code == 0, err and "tune" in out
    good, _ = inbox.take_requests(j.run_dir)
    spec = good[0].jobs[0]
    assert spec.name == "tune" and spec.steps == 50 and spec.memory_mb == 4096
    assert spec.command == [sys.executable, str(SIM), "--steps", "50"]
    assert spec.checkpoint is not None and spec.checkpoint.signal == "SIGUSR1"
    code, _, err = cli("submit", "--name", "x", "--", "no-such-program-here")
    assert code == ExitCode.BAD_INPUT and "not found" in err
    code, _, err = cli("submit", "--name", "y")
    assert code == ExitCode.USAGE and "command" in err
    code, _, err = cli("submit", "--steps", "3", str(tmp_path / "q.toml"))
    assert code == ExitCode.USAGE and "--name" in err


def test_command_line_text_quotes_everything() -> None:
    from miso_cli.spec.queue import tomllib

    argv = ['py"th\\on', "a b", "ü", "{x}"]
    text = command_queue_text("n", argv, env={"K": 'v"'}, grace="5s", priority=-3)
    raw = tomllib.loads(text)["job"][0]
    assert raw["command"] == argv and raw["env"] == {"K": 'v"'} and raw["priority"] == -3
    assert raw["checkpoint"] == {"grace": "5s"}


def test_submit_to_a_stopped_run_says_it_waits_for_resume(
    cli, tmp_path: Path, state_dir: Path
) -> None:
    make_run(tmp_path, state_dir, "a", pid=dead_pid())
    code, out, err = cli("submit", str(write_queue(tmp_path, job("b"))))
    assert code == 0, err
    assert "miso run --resume" in " ".join(out.split())


def test_cancel_and_priority(cli, tmp_path: Path, state_dir: Path) -> None:
    j = make_run(tmp_path, state_dir, "a", "b")
    code, out, err = cli("cancel", "a", "--json")
    assert code == 0, err
    assert parse_envelope(out)["data"]["states"] == {"a": "waiting"}
    code, _, err = cli("cancel", "zzz")
    assert code == ExitCode.USAGE and "no job 'zzz'" in err
    code, out, err = cli("priority", "b", "5")
    assert code == 0 and "priority 5" in out, err
    code, _, err = cli("priority", "--", "b", "-2")
    assert code == 0, err
    good, _ = inbox.take_requests(j.run_dir)
    assert [(r.kind, r.names, r.priority) for r in good] == [
        ("cancel", ["a"], None),
        ("priority", ["b"], 5),
        ("priority", ["b"], -2),
    ]
    j.jobs["a"].state = "finished"
    j.save()
    code, _, err = cli("cancel", "a")
    assert code == ExitCode.USAGE and "finished already" in err


def test_control_refuses_a_non_owner(tmp_path: Path, state_dir: Path) -> None:
    j = make_run(tmp_path, state_dir, "a")
    with pytest.raises(PermissionDenied):
        control(state_dir, "cancel", ["a"], euid=os.stat(j.run_dir).st_uid + 4242)
    with pytest.raises(BadInput):
        submit(state_dir, queue_path=write_queue(tmp_path, job("a"), "again.toml"))


def test_a_job_larger_than_any_gpu_is_refused(cli, tmp_path: Path, state_dir: Path) -> None:
    j = make_run(tmp_path, state_dir, "a")
    j.data["gpus"] = [{"index": 0, "model": "a100-40gb", "compute_slices": 7}]
    j.save()
    code, _, err = cli("submit", str(write_queue(tmp_path, job("big", memory="100GiB"))))
    assert code == ExitCode.BAD_INPUT and "memory" in err and "A100" in err
    code, _, err = cli("submit", str(write_queue(tmp_path, job("fits", memory="30GiB"), "b.toml")))
    assert code == 0, err


def test_a_run_that_ends_while_submitting_gets_nothing(
    tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from miso_cli.operate import submit as submit_mod
    from miso_cli.operate.runs import NoRun

    j = make_run(tmp_path, state_dir, "a")
    real_write = inbox.write_request

    def write_then_end(*args, **kwargs):  # the run ends just as the file lands
        rid = real_write(*args, **kwargs)
        j.status = "finished"
        j.save()
        return rid

    monkeypatch.setattr(submit_mod.inbox, "write_request", write_then_end)
    with pytest.raises(NoRun, match="ended while"):
        submit(state_dir, queue_path=write_queue(tmp_path, job("b")))
    assert os.listdir(inbox.inbox_dir(j.run_dir)) == []
