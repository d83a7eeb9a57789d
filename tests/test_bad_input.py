"""Bad input, as a person or a shell script meets it, on every command.

The contract: a clear one-line error on stderr that names the file, line or
option; a named non-zero exit code; with ``--json`` exactly one envelope on
stdout; never a traceback; never a half-changed GPU or a lost journal.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miso_cli.errors import ExitCode
from tests.conftest import ROOT, parse_envelope

EXAMPLES = ROOT / "examples"

TRACE_HEAD = "job,arrival_s,workload,duration_7g_s\n"
CATALOG = (
    "workload,mig_7g,mig_4g,mig_3g,mig_2g,mig_1g,mps_100,mps_50,mps_14\n"
    "toy-mlp_32,20.0,24.0,26.0,34.0,58.0,20.0,23.0,52.0\n"
    "toy-cnn_64,40.0,58.0,66.0,98.0,185.0,40.0,52.0,170.0\n"
)
PAIRS = (
    "workload,mix,jobs_in_mix,mps_100,mps_50,mps_14,mig_7g,mig_4g,mig_3g\n"
    "resnet_64,0,1,0.68,0.66,1.0,0.95,1.0,0.95\n"
)


def one_error_line(err: str, *names: str) -> str:
    """stderr holds one line, ``miso: error: ...``, naming each of ``names``."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    line = lines[0]
    assert line.startswith("miso: error: "), line
    for name in names:
        assert name in line, f"{name!r} not named in: {line}"
    return line


def check_failure(
    result: tuple[int, str, str],
    exit_code: ExitCode,
    *names: str,
    json_out: bool = True,
    progress: bool = False,
) -> dict:
    """The whole contract for one failed invocation; returns the envelope (or {})."""
    code, out, err = result
    assert "Traceback" not in out + err
    assert "internal error" not in err
    assert code == int(exit_code), f"exit {code}, wanted {int(exit_code)}: {err}"
    if progress:  # progress lines may come first; the error is the last line
        err = [ln for ln in err.splitlines() if ln.strip()][-1]
    one_error_line(err, *names)
    if not json_out:
        return {}
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, f"stdout must hold one envelope, got:\n{out}"
    env = parse_envelope(out)
    assert env["status"] == "error"
    assert env["errors"][0]["code"] == exit_code.name
    for name in names:
        assert name in env["errors"][0]["message"] + env["errors"][0].get("hint", "")
    return env


@pytest.fixture
def queue(tmp_path: Path) -> Path:
    """The quickstart queue beside its synthetic training script and catalog."""
    for name in ("quickstart.toml", "sim_train.py", "catalog.csv"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    return tmp_path / "quickstart.toml"


@pytest.fixture
def files(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    (d / "catalog.csv").write_text(CATALOG)
    (d / "trace.csv").write_text(TRACE_HEAD + "0,0,toy-mlp_32,60\n1,5,toy-cnn_64,60\n")
    (d / "pairs.csv").write_text(PAIRS)
    (d / "folder").mkdir()
    return d


# --------------------------------------------------------------------------- command lines


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["status", "--bogus"], ["--bogus"]),
        (["apply", "--plan", "{folder}"], ["--plan", "is a directory"]),
        (["plan", "{queue}", "--risk", "-1"], ["--risk"]),
        (["predict", "--gpu-model", "a100-40gb"], ["--data"]),
        (["profile", "{queue}", "--min-steps", "0"], ["--min-steps"]),
        (["simulate", "--trace", "t.csv", "--catalog", "c.csv", "--noise", "-1"], ["--noise"]),
        (["export", "--format", "bogus"], ["--format"]),
        (["calibrate", "--speedup", "0"], ["--speedup"]),
        (["layouts", "--gpu-index", "-1"], ["--gpu-index"]),
        (["nosuchcommand"], ["nosuchcommand"]),
    ],
)
@pytest.mark.parametrize("json_out", [True, False])
def test_parser_errors_follow_the_conventions(cli, files, queue, args, names, json_out):
    """What Click refuses is one line and exit 2, with an envelope under --json."""
    args = [a.format(folder=files / "folder", queue=queue) for a in args]
    if json_out:
        args.append("--json")
    env = check_failure(cli(*args), ExitCode.USAGE, *names, json_out=json_out)
    if json_out and args[0] != "nosuchcommand":
        assert env["command"] == args[0]


def test_bare_miso_still_shows_help(cli):
    code, out, err = cli()
    assert code == 2 and "Commands" in out + err and "miso: error" not in err


def test_help_is_not_an_error(cli):
    code, out, _ = cli("apply", "--help")
    assert code == 0 and "--plan" in out


# --------------------------------------------------------------------------- input files

LATIN1 = b"workload,mig_7g\n" + "caf\xe9,1.0\n".encode("latin-1")


def _file_args(files: Path, bad: Path) -> list[tuple[list[str], str]]:
    """(command line, the option that names ``bad``) for every command reading a table."""
    return [
        (["fit", "--data", str(bad), "--gpu-model", "a100-40gb"], "--data"),
        (["predict", "--data", str(bad), "--gpu-model", "a100-40gb"], "--data"),
        (["simulate", "--trace", str(bad), "--catalog", str(files / "catalog.csv")], "--trace"),
        (["simulate", "--trace", str(files / "trace.csv"), "--catalog", str(bad)], "--catalog"),
        (["calibrate", "--gpu", "sim:a100-40gb", "--catalog", str(bad)], "--catalog"),
        (["apply", "--gpu", "sim:a100-40gb", "--plan", str(bad)], "--plan"),
    ]


@pytest.mark.parametrize("index", range(6))
def test_a_file_that_is_not_utf8_names_file_and_line(cli, files, index):
    bad = files / "latin1.csv"
    bad.write_bytes(LATIN1)
    args, _ = _file_args(files, bad)[index]
    check_failure(cli(*args, "--json"), ExitCode.BAD_INPUT, f"{bad}:2", "UTF-8")


@pytest.mark.parametrize("index", range(6))
def test_a_csv_cell_too_long_for_the_csv_module_names_file_and_line(cli, files, index):
    bad = files / "long.csv"
    bad.write_text(
        "job,arrival_s,workload,duration_7g_s,mig_7g,mps_100,mps_50\n"
        + "a," * 3
        + "1" * 200_000
        + ",1,1,1\n"
    )
    args, _ = _file_args(files, bad)[index]
    if args[0] == "apply":  # a plan is JSON, not CSV: it fails as JSON
        check_failure(cli(*args, "--json"), ExitCode.BAD_INPUT, str(bad))
        return
    check_failure(cli(*args, "--json"), ExitCode.BAD_INPUT, f"{bad}:2")


def test_a_catalog_with_an_infinite_step_time_is_refused(cli, files):
    cat = files / "inf.csv"
    cat.write_text("workload,mig_7g,mig_1g\ntoy-mlp_32,inf,5\n")
    args = ["simulate", "--trace", str(files / "trace.csv"), "--catalog", str(cat), "--json"]
    check_failure(cli(*args), ExitCode.BAD_INPUT, f"{cat}:2", "mig_7g")


def test_a_byte_order_mark_is_not_part_of_the_first_column(cli, files):
    """Spreadsheets save UTF-8 with a BOM; the 'workload' column must still be found."""
    cat = files / "bom.csv"
    cat.write_bytes(b"\xef\xbb\xbf" + CATALOG.encode())
    trace = files / "bom-trace.csv"
    trace.write_bytes(b"\xef\xbb\xbf" + (files / "trace.csv").read_bytes())
    code, out, err = cli(
        "simulate", "--trace", str(trace), "--catalog", str(cat), "--policy", "nopart", "--json"
    )
    assert code == 0, err
    assert parse_envelope(out)["data"]["results"][0]["policy"] == "nopart"


_CELL = st.one_of(
    st.sampled_from(["0", "1", "-1", "nan", "inf", "1e308", "", "toy-mlp_32", "toy-cnn_64", "x"]),
    st.text(max_size=6),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.sampled_from([TRACE_HEAD, "job,arrival_s,workload\n", ""]),
    rows=st.lists(st.lists(_CELL, min_size=0, max_size=5), max_size=4),
    tail=st.binary(max_size=8),
)
def test_any_trace_is_simulated_or_refused_in_one_line(tmp_path_factory, header, rows, tail):
    """Whatever the trace holds, simulate finishes (0) or names the trace (3); nothing else."""
    from typer.testing import CliRunner

    from miso_cli.cli import app

    d = tmp_path_factory.mktemp("trace")
    (d / "catalog.csv").write_text(CATALOG)
    body = header + "".join(",".join(r) + "\n" for r in rows)
    (d / "trace.csv").write_bytes(body.encode("utf-8", "surrogatepass") + tail)
    args = ["simulate", "--trace", str(d / "trace.csv"), "--catalog", str(d / "catalog.csv")]
    args += ["--policy", "nopart,static", "--json"]
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    assert "Traceback" not in r.stdout + r.stderr
    if r.exit_code == 0:
        assert parse_envelope(r.stdout)["status"] == "ok"
        return
    assert r.exit_code == ExitCode.BAD_INPUT, r.stderr
    check_failure((r.exit_code, r.stdout, r.stderr), ExitCode.BAD_INPUT, "trace.csv")


# --------------------------------------------------------------------------- the state dir


def _state_dir_commands(files: Path, queue: Path) -> list[list[str]]:
    sim = ["--gpu", "sim:a100-40gb"]
    return [
        ["status", *sim],
        ["layouts", *sim],
        ["apply", "3g.20gb", *sim],
        ["run", str(queue), *sim],
        ["profile", str(queue), *sim],
        ["plan", str(queue), *sim],
        ["calibrate", *sim],
        ["fit", "--data", str(files / "pairs.csv"), "--gpu-model", "a100-40gb"],
        ["predict", "--data", str(files / "pairs.csv"), "--gpu-model", "a100-40gb"],
        ["simulate", "--trace", str(files / "trace.csv"), "--catalog", str(files / "catalog.csv")],
        ["export", *sim],
    ]


@pytest.mark.parametrize("index", range(11))
@pytest.mark.parametrize("below", [False, True])
def test_a_state_dir_that_is_a_file_is_a_usage_error(cli, files, queue, tmp_path, index, below):
    afile = tmp_path / "not-a-dir"
    afile.write_text("x")
    state = afile / "miso" if below else afile
    args = _state_dir_commands(files, queue)[index]
    env = check_failure(
        cli(*args, "--state-dir", str(state), "--json"), ExitCode.USAGE, str(state), "--state-dir"
    )
    assert env["command"] == args[0]
    assert afile.read_text() == "x"


def test_doctor_reports_a_state_dir_that_is_a_file_as_a_finding(cli, tmp_path):
    afile = tmp_path / "not-a-dir"
    afile.write_text("x")
    code, out, err = cli("doctor", "--gpu", "sim:a100-40gb", "--state-dir", str(afile), "--json")
    assert code != 0 and "Traceback" not in err
    checks = {c["name"]: c for c in parse_envelope(out)["data"]["checks"]}
    assert checks["state-dir"]["status"] == "fail"
    assert all(ln.startswith("miso: error: ") for ln in err.splitlines() if ln.strip())


def test_a_model_that_cannot_be_written_names_the_path_asked_for(cli, files):
    """--out on a folder: the message names --out's path, not the temp file beside it."""
    out_dir = files / "folder"
    rows = [
        f"{fam}_{k},{fam}{k},1,{0.3 + k / 50:.3f},{0.4 + k / 60:.3f},1.0,{0.6 + k / 40:.3f},0.9,1.0"
        for fam in ("resnet", "bert")
        for k in range(12)
    ]
    (files / "train.csv").write_text(PAIRS.splitlines()[0] + "\n" + "\n".join(rows) + "\n")
    args = ["fit", "--data", str(files / "train.csv"), "--gpu-model", "a100-40gb"]
    code, out, err = cli(*args, "--out", str(out_dir), "--estimators", "ridge", "--json")
    assert code != 0 and "Traceback" not in err and "internal error" not in err
    line = one_error_line(err, str(out_dir))
    assert ".tmp" not in line
    assert parse_envelope(out)["status"] == "error"


# --------------------------------------------------------------------------- simulated GPU state


def _sim_state(cli, state_dir: Path) -> Path:
    assert cli("apply", "3g.20gb", "2g.10gb", "--gpu", "sim:a100-40gb")[0] == 0
    path = state_dir / "sim" / "a100-40gb.json"
    assert path.is_file()
    return path


def _corrupt(path: Path, how: str) -> None:
    good = json.loads(path.read_text())
    if how == "folder":
        path.unlink()
        path.mkdir()
        return
    text = {
        "truncated": path.read_text()[:80],
        "empty": "",
        "list": "[1, 2]",
        "gpu-not-object": json.dumps({**good, "gpus": [1]}),
        "bad-instance": json.dumps(
            {**good, "gpus": [{**good["gpus"][0], "instances": [{"id": "x"}]}]}
        ),
        "bad-process": json.dumps({**good, "processes": [{"pid": "me"}]}),
    }.get(how)
    if text is None:
        path.write_bytes(b"\xff\xfe\x00garbage")
    else:
        path.write_text(text)


@pytest.mark.parametrize(
    "how",
    [
        "truncated",
        "empty",
        "binary",
        "list",
        "folder",
        "gpu-not-object",
        "bad-instance",
        "bad-process",
    ],
)
@pytest.mark.parametrize("command", ["status", "apply"])
def test_a_corrupted_simulated_gpu_state_is_bad_input_naming_it(cli, state_dir, how, command):
    path = _sim_state(cli, state_dir)
    _corrupt(path, how)
    args = ["status"] if command == "status" else ["apply", "7g.40gb"]
    env = check_failure(
        cli(*args, "--gpu", "sim:a100-40gb", "--json"), ExitCode.BAD_INPUT, str(path)
    )
    assert "delete" in env["errors"][0]["hint"]


# --------------------------------------------------------------------------- apply --plan


def _layouts(cli) -> list[tuple[bool, list[tuple[str, int]]]]:
    code, out, err = cli("status", "--gpu", "sim:a100-40gbx2", "--json")
    assert code == 0, err
    return [
        (g["mig_current"], [(i["profile"], i["placement"]["start"]) for i in g["instances"]])
        for g in parse_envelope(out)["data"]["gpus"]
    ]


def _write_plan(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    return path


def test_a_plan_wrong_for_its_second_gpu_changes_no_gpu(cli, tmp_path):
    before = _layouts(cli)
    plan = _write_plan(
        tmp_path,
        {"gpus": [{"index": 0, "layout": ["7g.40gb"]}, {"index": 1, "layout": ["4g.24gb"]}]},
    )
    args = ["apply", "--plan", str(plan), "--gpu", "sim:a100-40gbx2", "--json"]
    check_failure(cli(*args), ExitCode.BAD_INPUT, str(plan), "GPU 1", "4g.24gb")
    assert _layouts(cli) == before


def test_a_plan_for_a_gpu_the_machine_lacks_names_the_plan_and_changes_nothing(cli, tmp_path):
    before = _layouts(cli)
    plan = _write_plan(
        tmp_path,
        {"gpus": [{"index": 0, "layout": ["7g.40gb"]}, {"index": 2, "layout": ["7g.40gb"]}]},
    )
    args = ["apply", "--plan", str(plan), "--gpu", "sim:a100-40gbx2", "--json"]
    check_failure(cli(*args), ExitCode.BAD_INPUT, str(plan), "GPU 2", "has 2")
    assert _layouts(cli) == before


def test_an_a30_plan_on_an_a100_is_bad_input(cli, tmp_path):
    plan = _write_plan(tmp_path, {"gpus": [{"index": 0, "layout": ["4g.24gb"]}]})
    args = ["apply", "--plan", str(plan), "--gpu", "sim:a100-40gb", "--json"]
    check_failure(cli(*args), ExitCode.BAD_INPUT, str(plan), "4g.24gb", "a100-40gb")


def test_a_plan_with_no_gpus_is_bad_input(cli, tmp_path):
    plan = _write_plan(tmp_path, {"gpus": []})
    args = ["apply", "--plan", str(plan), "--gpu", "sim:a100-40gb", "--json"]
    check_failure(cli(*args), ExitCode.BAD_INPUT, str(plan), "no GPUs")


_TOKENS = st.sampled_from(
    [
        "7g.40gb",
        "4g.20gb",
        "3g.20gb",
        "3g.20gb@4",
        "2g.10gb",
        "1g.5gb",
        "1g.5gb@6",
        "1g.10gb",
        "4g.24gb",
        "9g.99gb",
        "3g.20gb@9",
        "1g.5gb@x",
        "3g.20gb@0:4",
        "3g.20gb@0:3",
        "",
    ]
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 3) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
_GPU = st.fixed_dictionaries(
    {
        "index": st.one_of(st.integers(-1, 3), st.just("0"), st.none(), st.booleans()),
        "layout": st.one_of(st.lists(_TOKENS, max_size=5), _JSON),
    },
    optional={"mode": st.sampled_from(["mig", "full", 3])},
)
_PLAN = st.one_of(
    st.fixed_dictionaries({"gpus": st.lists(_GPU, max_size=3)}),
    st.fixed_dictionaries(
        {
            "schema_version": st.just(1),
            "data": st.fixed_dictionaries({"gpus": st.lists(_GPU, max_size=3)}),
        }
    ),
    _JSON,
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_PLAN, dry_run=st.booleans())
def test_any_plan_is_applied_whole_or_refused_with_the_gpus_untouched(
    tmp_path_factory, doc, dry_run
):
    """Whatever the plan holds: exit 0, or exit 3 naming the plan with every GPU as it was."""
    from typer.testing import CliRunner

    from miso_cli.cli import app

    runner = CliRunner()

    def cli(*args: str) -> tuple[int, str, str]:
        r = runner.invoke(app, list(args), catch_exceptions=False)
        return r.exit_code, r.stdout, r.stderr

    before = _layouts(cli)
    plan = _write_plan(tmp_path_factory.mktemp("plan"), doc)
    args = ["apply", "--plan", str(plan), "--gpu", "sim:a100-40gbx2", "--json"]
    result = cli(*args, *(["--dry-run"] if dry_run else []))
    code, out, err = result
    assert "Traceback" not in out + err
    if code == 0:
        assert parse_envelope(out)["status"] == "ok"
        if dry_run:
            assert _layouts(cli) == before
        return
    check_failure(result, ExitCode.BAD_INPUT, str(plan))
    assert _layouts(cli) == before


# --------------------------------------------------------------------------- run and its journal


def _journal(state_dir: Path, queue: Path) -> Path:
    from miso_cli.runtime.journal import Journal
    from miso_cli.spec.queue import load_queue

    j = Journal.create(
        state_dir,
        load_queue(queue),
        gpu_spec="sim:a100-40gb",
        policy="nopart",
        policy_options={},
        options={},
    )
    j.status = "running"
    j.save()
    return j.run_dir / "journal.json"


@pytest.mark.parametrize(
    ("how", "names"),
    [
        ("list", ["not a miso journal"]),
        ("truncated", ["unreadable journal"]),
        ("binary", ["unreadable journal"]),
        ("no-policy", ["'policy'"]),
        ("jobs-list", ["'jobs'"]),
        ("bad-queue", ["damaged journal"]),
        ("bad-job", ["damaged journal"]),
    ],
)
def test_a_damaged_journal_is_bad_input_on_resume_and_stays_as_it_was(
    cli, state_dir, queue, how, names
):
    path = _journal(state_dir, queue)
    doc = json.loads(path.read_text())
    broken = {
        "list": "[1]",
        "truncated": path.read_text()[:100],
        "no-policy": json.dumps({k: v for k, v in doc.items() if k != "policy"}),
        "jobs-list": json.dumps({**doc, "jobs": [1]}),
        "bad-queue": json.dumps({**doc, "queue": {"x": 1}}),
        "bad-job": json.dumps({**doc, "jobs": {"a": {"bogus": 1}}}),
    }.get(how)
    data = b"\x80\x81 not json" if broken is None else broken.encode()
    path.write_bytes(data)
    args = ["run", "--resume", "--gpu", "sim:a100-40gb", "--json"]
    check_failure(cli(*args), ExitCode.BAD_INPUT, str(path), *names)
    assert path.read_bytes() == data


def test_resume_with_nothing_to_resume_is_a_usage_error(cli, state_dir):
    check_failure(cli("run", "--resume", "--json"), ExitCode.USAGE, "--resume", str(state_dir))


def test_a_model_that_does_not_load_stops_run_before_any_job_starts(
    cli, state_dir, queue, tmp_path
):
    model = tmp_path / "model.joblib"
    model.write_bytes(b"not a joblib")
    model.chmod(0o600)
    args = ["run", str(queue), "--gpu", "sim:a100-40gb", "--model", str(model), "--json"]
    check_failure(cli(*args), ExitCode.BAD_INPUT, str(model))
    assert not (state_dir / "runs").exists()  # no journal: nothing half-started to resume


# --------------------------------------------------------------------------- option values


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["run", "{queue}", "--gpu", "sim:a100-40gb", "--speedup", "inf"], "--speedup"),
        (["profile", "{queue}", "--gpu", "sim:a100-40gb", "--speedup", "inf"], "--speedup"),
        (["calibrate", "--gpu", "sim:a100-40gb", "--speedup", "inf"], "--speedup"),
        (["calibrate", "--gpu", "sim:a100-40gb", "--max-level-s", "inf"], "--max-level-s"),
        (["plan", "{queue}", "--gpu", "sim:a100-40gb", "--risk", "inf"], "--risk"),
        (
            ["simulate", "--trace", "{trace}", "--catalog", "{catalog}", "--profile-s", "inf"],
            "--profile-s",
        ),
        (
            ["simulate", "--trace", "{trace}", "--catalog", "{catalog}", "--reconfig-s", "inf"],
            "--reconfig-s",
        ),
        (
            [
                "simulate",
                "--trace",
                "{trace}",
                "--catalog",
                "{catalog}",
                "--static-layout",
                "9g.99gb",
            ],
            "--static-layout",
        ),
        (
            ["simulate", "--trace", "{trace}", "--catalog", "{catalog}", "--static-layout", ","],
            "--static-layout",
        ),
        (["status", "--gpu", "sim:nope"], "--gpu"),
        (["status", "--gpu", "sim:a100-40gbx0"], "--gpu"),
        (["status", "--gpu", "sim:a100-40gbx-1"], "--gpu"),
        (
            ["layouts", "--gpu", "sim:a100-40gb", "--gpu-index", "99999999999999999999"],
            "--gpu-index",
        ),
        (["profile", "{queue}", "--gpu", "sim:a100-40gb", "--levels", "0,150"], "--levels"),
        (["run", "{queue}", "--gpu", "sim:a100-40gb", "--policy", "bogus"], "--policy"),
        (["run", "{queue}", "--gpu", "sim:a100-40gb", "--hang-timeout", "0"], "--hang-timeout"),
        (["run", "{queue}", "--gpu", "sim:a100-40gb", "--speedup", "-1"], "--speedup"),
    ],
)
def test_bad_option_values_are_usage_errors_naming_the_option(cli, files, queue, args, option):
    names = {"queue": queue, "trace": files / "trace.csv", "catalog": files / "catalog.csv"}
    args = [a.format(**names) for a in args]
    check_failure(cli(*args, "--json"), ExitCode.USAGE, option)


def test_a_bad_layout_profile_is_bad_input_in_run_as_in_apply(cli, queue):
    """A profile the GPU does not have: the same exit code from run --layout and apply."""
    run = cli("run", str(queue), "--gpu", "sim:a100-40gb", "--layout", "9g.99gb", "--json")
    check_failure(run, ExitCode.BAD_INPUT, "--layout", "9g.99gb")
    apply = cli("apply", "--gpu", "sim:a100-40gb", "9g.99gb", "--json")
    assert apply[0] == run[0] == int(ExitCode.BAD_INPUT)


def test_result_errors_reach_stderr_under_json_too(cli):
    """doctor returns its failures as data; with --json a person still sees why on stderr."""
    code, out, err = cli("doctor", "--gpu", "sim:nope", "--json")
    assert code == ExitCode.USAGE
    env = parse_envelope(out)
    assert env["status"] == "error"
    one_error_line(err, "--gpu")
