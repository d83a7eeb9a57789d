"""The envelope, exit codes, atomic state writes and catalog loading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from miso_cli.cli.output import SCHEMA_VERSION, dumps, envelope
from miso_cli.errors import BadInput, ExitCode, MisoError, NoGpu
from miso_cli.runtime.state import atomic_write_json, default_state_dir, read_json
from miso_cli.spec.catalog import load_catalog


def test_exit_codes_are_stable() -> None:
    # Shell scripts depend on these numbers: a change here breaks users.
    assert {c.name: c.value for c in ExitCode} == {
        "OK": 0,
        "FAILURE": 1,
        "USAGE": 2,
        "BAD_INPUT": 3,
        "NO_GPU": 4,
        "PERMISSION": 5,
        "STATE_DIFFERS": 6,
        "JOBS_FAILED": 7,
        "GPU_BUSY": 8,
        "ROLLED_BACK": 9,
        "INCONSISTENT": 10,
        "INTERRUPTED": 130,
    }


def test_error_carries_code_hint_and_exit_code() -> None:
    err = NoGpu("no NVIDIA driver", hint="use --gpu sim:a100-40gb")
    assert err.exit_code == ExitCode.NO_GPU
    assert err.as_dict() == {
        "code": "NO_GPU",
        "message": "no NVIDIA driver",
        "hint": "use --gpu sim:a100-40gb",
    }
    custom = MisoError("x", code="CUSTOM", exit_code=ExitCode.BAD_INPUT)
    assert (custom.code, custom.exit_code) == ("CUSTOM", ExitCode.BAD_INPUT)


def test_envelope_shape_and_nan_becomes_null() -> None:
    from datetime import datetime, timedelta, timezone

    now = datetime(2026, 11, 30, 2, 3, 4, tzinfo=timezone(timedelta(hours=1)))
    env = envelope(
        "status", {"value": float("nan"), "ok": [1.5, float("inf")]}, now=now, hostname="n1"
    )
    assert env == {
        "schema_version": SCHEMA_VERSION,
        "command": "status",
        "status": "ok",
        "hostname": "n1",
        "time": "2026-11-30T01:03:04Z",  # UTC
        "data": {"value": None, "ok": [1.5, None]},
        "errors": [],
    }
    bad = envelope("apply", None, [{"code": "GPU_BUSY", "message": "m"}])
    assert bad["status"] == "error" and bad["data"] == {}
    import socket

    assert bad["hostname"] == socket.gethostname() and bad["time"].endswith("Z")
    json.loads(dumps(env))  # strict JSON: no NaN tokens


def test_atomic_write_is_private_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "journal.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert read_json(target) == {"a": 2}
    assert (target.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["journal.json"]  # no temp left


def test_state_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MISO_STATE_DIR", str(tmp_path / "explicit"))
    assert default_state_dir() == tmp_path / "explicit"
    monkeypatch.delenv("MISO_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "miso"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_dir() == Path(os.path.expanduser("~")) / ".local" / "state" / "miso"


CATALOG = """workload,mig_7g,mig_4g,mig_3g,mig_2g,mig_1g,mps_100,mps_50,mps_14
toy_1,10,14,16,25,,10,12,40
toy_2,20,30,,,,20,25,80
"""


def test_catalog_lookup_and_mps_interpolation(tmp_path: Path) -> None:
    path = tmp_path / "cat.csv"
    path.write_text(CATALOG)
    cat = load_catalog(path)
    toy = cat["toy_1"]
    assert toy.family == "toy"
    assert toy.step_time_ms(4) == 14 and toy.step_time_ms(1) is None
    assert not toy.fits(1) and toy.smallest_fit() == 2
    assert toy.mps_step_time_ms(100) == 10
    assert toy.mps_step_time_ms(50) == 12
    # between levels: throughput is interpolated, so the time lies between the two
    assert 12 < toy.mps_step_time_ms(30) < 40
    # below the lowest level, throughput falls with the share
    assert toy.mps_step_time_ms(7) == pytest.approx(80)
    assert cat["toy_2"].smallest_fit() == 4


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name,mig_7g\nx,1\n", "'workload' column"),
        ("workload,mps_100\nx,1\n", "mig_<g>g"),
        ("workload,mig_7g\nx,abc\n", ":2: column mig_7g: 'abc' is not a number"),
        ("workload,mig_7g\nx,-1\n", "must be positive"),
        ("workload,mig_7g\nx,1\nx,2\n", ":3: workload 'x' appears twice"),
        ("workload,mig_7g\nx,\n", "fits no MIG slice"),
        ("workload,mig_7g\n", "no workloads"),
    ],
)
def test_catalog_errors_name_file_and_line(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(BadInput) as info:
        load_catalog(path)
    assert needle in info.value.message
    assert str(path) in info.value.message


def test_catalog_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="cannot read catalog"):
        load_catalog(tmp_path / "nope.csv")
    with pytest.raises(BadInput, match="unknown workload"):
        load_catalog(_write(tmp_path))["missing"]


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "ok.csv"
    path.write_text(CATALOG)
    return path


def test_real_catalog_loads(shared_data: Path) -> None:
    cat = load_catalog(shared_data / "a100-40gb" / "catalog.csv")
    assert len(cat) >= 10
    for w in cat.workloads.values():
        assert w.fits(7)


def test_version_json_is_an_envelope(cli) -> None:
    from tests.conftest import parse_envelope

    for args in (("--version", "--json"), ("--json", "--version")):
        code, out, _ = cli(*args)
        assert code == 0
        env = parse_envelope(out)
        assert env["command"] == "version" and env["status"] == "ok"
        assert env["data"]["miso"] and "nvidia-ml-py" in env["data"]
        assert env["hostname"] and env["time"].endswith("Z")
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("miso ")
    code, out, err = cli("--json")  # no command: a usage error, as an envelope
    assert code == 2 and parse_envelope(out)["errors"][0]["code"] == "USAGE"
