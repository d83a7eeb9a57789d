"""Queue files: strict validation with file:line:key messages, and no input ever a traceback."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miso_cli.errors import BadInput, ExitCode
from miso_cli.spec.queue import (
    JOB_KEYS,
    JobSpec,
    QueueSpec,
    check_memory,
    expand,
    load_queue,
    parse_duration_s,
    parse_memory_mb,
    parse_queue,
    parse_signal,
)

GOOD = """\
version = 1

[[job]]
name = "a"
command = ["python", "train.py", "--steps", "10"]
steps = 10
memory = "8GiB"
retries = 2
priority = 1
hang_timeout = "5m"
env = { OMP_NUM_THREADS = 4, MODE = "fast" }

[job.checkpoint]
signal = "USR1"
grace = "2s"
resume_args = ["--resume", "{checkpoint_dir}/last.pt"]

[[job]]
name = "b"
command = "echo hi && sleep 1"
shell = true
progress = "tqdm"
"""


@pytest.fixture
def qdir(tmp_path: Path) -> Path:
    (tmp_path / "train.py").write_text("print('hi')\n")
    return tmp_path


def write(qdir: Path, text: str) -> Path:
    p = qdir / "queue.toml"
    p.write_text(text)
    return p


def bad(qdir: Path, text: str) -> BadInput:
    with pytest.raises(BadInput) as info:
        load_queue(write(qdir, text))
    assert info.value.exit_code == ExitCode.BAD_INPUT
    assert "\n" not in info.value.message
    return info.value


def test_good_queue(qdir: Path) -> None:
    q = load_queue(write(qdir, GOOD))
    a, b = q.jobs
    assert a.name == "a" and a.command[1] == "train.py"
    assert a.memory_mb == 8192 and a.steps == 10 and a.retries == 2 and a.priority == 1
    assert a.hang_timeout_s == 300 and a.env == {"OMP_NUM_THREADS": "4", "MODE": "fast"}
    assert a.checkpoint is not None and a.checkpoint.signal == "SIGUSR1"
    assert a.checkpoint.grace_s == 2 and a.checkpointable
    assert a.cwd == str(qdir.resolve())
    assert b.shell and b.command == "echo hi && sleep 1" and b.progress == "tqdm"
    assert not b.checkpointable and b.line == 18
    # round trip through the journal's JSON
    again = QueueSpec.from_json(q.to_json())
    assert again.jobs == q.jobs


@pytest.mark.parametrize(
    "snippet, line, words",
    [
        ('name = "a"\ncommand = ["python", "train.py"]\ncolour = "red"\n', 6, "colour"),
        ('name = "a"\ncommand = ["python", "missing.py"]\n', 5, "missing.py"),
        ('name = "a"\ncommand = ["no-such-program-xyz"]\n', 5, "no-such-program-xyz"),
        ('name = "a"\ncommand = "python train.py"\n', 5, "shell = true"),
        ('name = "a"\ncommand = ["python", "train.py"]\nsteps = "ten"\n', 6, "steps"),
        ('name = "a"\ncommand = ["python", "train.py"]\nsteps = 0\n', 6, "steps"),
        ('name = "a"\ncommand = ["python", "train.py"]\nmemory = "lots"\n', 6, "memory"),
        ('name = "a"\ncommand = ["python", "train.py"]\nretries = -1\n', 6, "retries"),
        ('name = "a"\ncommand = ["python", "train.py"]\nprogress = "bar"\n', 6, "progress"),
        (
            'name = "a"\ncommand = ["python", "train.py"]\nprogress_regex = "(x"\n',
            6,
            "progress_regex",
        ),
        ('name = "a"\ncommand = ["python", "train.py"]\nprogress_regex = "x"\n', 6, "group"),
        ('name = "a"\ncommand = ["python", "train.py"]\ncwd = "nowhere"\n', 6, "nowhere"),
        ('name = "a b"\ncommand = ["python", "train.py"]\n', 4, "name"),
        ('name = "a"\ncommand = ["python", "train.py"]\nenv = { X = [1] }\n', 6, "env.X"),
        ('command = ["python", "train.py"]\n', 3, "name"),
        ('name = "a"\n', 3, "command"),
        (
            'name = "a"\ncommand = ["python", "train.py"]\n[job.checkpoint]\nsignal = "SIGKILL"\n',
            7,
            "checkpoint.signal",
        ),
        (
            'name = "a"\ncommand = ["python", "train.py"]\n[job.checkpoint]\nwhen = 1\n',
            7,
            "checkpoint.when",
        ),
        (
            'name = "a"\ncommand = ["python", "train.py"]\n'
            'checkpoint = { resume_args = ["{x}"] }\n',
            6,
            "placeholder",
        ),
    ],
)
def test_bad_job_names_line_and_key(qdir: Path, snippet: str, line: int, words: str) -> None:
    err = bad(qdir, "version = 1\n\n[[job]]\n" + snippet)
    assert err.message.startswith(f"{qdir / 'queue.toml'}:{line}:"), err.message
    assert words in err.message + (err.hint or "")


def test_duplicate_names(qdir: Path) -> None:
    job = '[[job]]\nname = "a"\ncommand = ["python", "train.py"]\n'
    err = bad(qdir, "version = 1\n" + job + job)
    assert ":6:" in err.message and "duplicate" in err.message and "line 2" in err.message


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "version"),
        ("version = 2\n[[job]]\nname='a'\ncommand=['true']\n", "version"),
        ("version = 1\n", "empty"),
        ("version = 1\njob = 3\n", "job"),
        ("version = 1\nextra = 3\n[[job]]\nname='a'\ncommand=['true']\n", "extra"),
        ("version = 1\n[[job\n", "not valid TOML"),
        ("version = 1\njob = []\n", "empty"),
    ],
)
def test_bad_files(qdir: Path, text: str, words: str) -> None:
    assert words in bad(qdir, text).message


def test_unreadable(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="cannot read"):
        load_queue(tmp_path / "none.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(BadInput, match="UTF-8"):
        load_queue(tmp_path / "bin.toml")
    with pytest.raises(BadInput, match="directory"):
        load_queue(tmp_path)


def test_memory_check_names_line(qdir: Path) -> None:
    q = load_queue(write(qdir, GOOD))
    check_memory(q, 9856, "the largest slice")
    with pytest.raises(BadInput) as info:
        check_memory(q, 4864, "a 1g.5gb instance")
    assert f"{qdir / 'queue.toml'}:7:" in info.value.message
    assert "1g.5gb" in info.value.message


def test_value_parsers() -> None:
    assert parse_memory_mb("8GiB") == 8192
    assert parse_memory_mb("20GB") == pytest.approx(20e9 / 2**20)
    assert parse_memory_mb(512) == 512
    assert parse_duration_s("250ms") == 0.25
    assert parse_duration_s("1.5h") == 5400
    assert parse_signal(10) == "SIGUSR1"
    assert parse_signal("term") == "SIGTERM"
    for fn, v in [(parse_memory_mb, -1), (parse_memory_mb, True), (parse_duration_s, "soon")]:
        with pytest.raises(ValueError):
            fn(v)
    assert (
        expand("{checkpoint_dir}/x-{attempt}", checkpoint_dir="/c", job="j", attempt=2) == "/c/x-2"
    )


def test_python_module_and_flags(qdir: Path) -> None:
    q = parse_queue(
        'version = 1\n[[job]]\nname = "m"\ncommand = ["python", "-m", "json.tool"]\n'
        '[[job]]\nname = "u"\ncommand = ["python", "-u", "train.py"]\n',
        qdir / "q.toml",
    )
    assert [j.name for j in q.jobs] == ["m", "u"]
    with pytest.raises(BadInput, match="nope.py"):
        parse_queue(
            'version = 1\n[[job]]\nname = "u"\ncommand = ["python", "-u", "nope.py"]\n',
            qdir / "q.toml",
        )


# ---------------------------------------------------------------- fuzzing

# Every key the spec knows, plus the checkpoint table's and one it does not.
_keys = st.sampled_from(
    sorted(JOB_KEYS | {"version", "job", "signal", "grace", "resume_args", "x"})
)
_scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["python", "train.py", "8GiB", "SIGUSR1", "30s", "(?P<step>\\d+)", "{x}"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4)),
    max_leaves=12,
)


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(v), repr(v))
    if isinstance(v, str):
        return '"' + "".join(c if c.isalnum() or c in " ._-/(){}?<>" else "_" for c in v) + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    version=st.one_of(st.just(1), _scalars),
    jobs=st.lists(st.dictionaries(_keys, _values, max_size=6), max_size=3),
)
def test_fuzz_structured(qdir: Path, version: object, jobs: list[dict[str, object]]) -> None:
    text = f"version = {_toml_value(version)}\n"
    for job in jobs:
        text += "[[job]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in job.items())
    try:
        q = parse_queue(text, qdir / "q.toml")
    except BadInput as exc:
        assert exc.message and "\n" not in exc.message
    else:
        assert all(isinstance(j, JobSpec) for j in q.jobs)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(alphabet=string.printable + "é[]=\"'{}", max_size=200))
def test_fuzz_raw_text(qdir: Path, text: str) -> None:
    try:
        parse_queue("version = 1\n" + text, qdir / "q.toml")
    except BadInput as exc:
        assert exc.message


def test_a_queue_file_with_a_byte_order_mark_reads_as_without(tmp_path: Path) -> None:
    from miso_cli.spec.queue import load_queue

    (tmp_path / "t.py").write_text("")
    body = 'version = 1\n\n[[job]]\nname = "a"\ncommand = ["python", "t.py"]\n'
    path = tmp_path / "q.toml"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert [j.name for j in load_queue(path).jobs] == ["a"]


def test_a_path_the_os_refuses_to_look_up_is_bad_input_naming_the_key(tmp_path) -> None:
    """A script or cwd name too long for the OS (found by the fuzzer): one line, no traceback."""
    from miso_cli.errors import BadInput
    from miso_cli.spec.queue import parse_queue

    long = "9" * 5000
    with pytest.raises(BadInput, match="command"):
        parse_queue(
            f'version = 1\n[[job]]\nname = "a"\ncommand = ["python3", "{long}/x.py"]\n',
            tmp_path / "q.toml",
        )
    with pytest.raises(BadInput, match="cwd"):
        parse_queue(
            f'version = 1\n[[job]]\nname = "a"\ncommand = ["python3", "x.py"]\ncwd = "{long}"\n',
            tmp_path / "q.toml",
        )
