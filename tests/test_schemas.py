"""The JSON Schemas in schemas/: each command's envelope, tested against real output on a
simulated GPU, and the queue file, tested against the examples and broken queues."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from miso_cli.errors import BadInput
from miso_cli.spec.queue import load_queue
from tests.conftest import parse_envelope
from tests.test_export import PLAN

jsonschema = pytest.importorskip("jsonschema", reason="a test extra: pip install -e '.[test]'")
referencing = pytest.importorskip("referencing")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"


def _registry() -> Any:
    resources = []
    for path in SCHEMAS.glob("*.schema.json"):
        doc = json.loads(path.read_text(encoding="utf-8"))
        resource = referencing.Resource.from_contents(doc)
        resources += [(doc["$id"], resource), (path.name, resource)]
    return referencing.Registry().with_resources(resources)


def _validator(name: str) -> Any:
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=_registry())


def _check(command: str, env: dict[str, Any]) -> None:
    errors = sorted(_validator(f"{command}.schema.json").iter_errors(env), key=str)
    assert not errors, [e.message for e in errors]


def test_every_command_has_an_up_to_date_schema() -> None:
    sys.path.insert(0, str(SCHEMAS))
    try:
        import generate
    finally:
        sys.path.remove(str(SCHEMAS))
    for command in generate.commands():
        path = SCHEMAS / f"{command}.schema.json"
        assert path.exists(), f"{path.name} missing: python schemas/generate.py"
        assert path.read_text(encoding="utf-8") == generate.render(command), (
            f"{path.name} is stale: python schemas/generate.py"
        )


@pytest.mark.parametrize(
    "command, args",
    [
        ("version", ["--version", "--json"]),
        ("status", ["status", "--gpu", "sim:a100-40gb", "--json"]),
        ("status", ["status", "--gpu", "sim:h100-80gbx2", "--json"]),
        ("layouts", ["layouts", "--model", "a30-24gb", "--json"]),
        ("layouts", ["layouts", "--gpu", "sim:a100-40gb", "--json"]),
        ("export", ["export", "--gpu", "sim:a100-40gb", "--json"]),
        ("doctor", ["doctor", "--gpu", "sim:a100-40gb", "--json"]),
    ],
)
def test_real_output_matches_its_schema(cli, command: str, args: list[str]) -> None:
    code, out, _ = cli(*args)
    env = parse_envelope(out)
    assert env["command"] == command
    _check(command, env)


@pytest.mark.parametrize("fmt", ["mig-parted", "k8s", "slurm"])
def test_export_of_a_plan_matches_the_schema(cli, tmp_path: Path, fmt: str) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    code, out, _ = cli("export", "-f", fmt, "--plan", str(plan), "--json")
    assert code == 0
    _check("export", parse_envelope(out))


def test_error_envelopes_match(cli, tmp_path: Path) -> None:
    code, out, _ = cli("export", "--plan", str(tmp_path / "none.json"), "--json")
    assert code == 3
    env = parse_envelope(out)
    _check("export", env)
    code, out, _ = cli("layouts", "--model", "nope", "--json")
    _check("layouts", parse_envelope(out))


def test_schema_rejects_what_it_should(cli) -> None:
    code, out, _ = cli("layouts", "--model", "a100-40gb", "--json")
    env = parse_envelope(out)
    validator = _validator("layouts.schema.json")
    for broken in (
        {k: v for k, v in env.items() if k != "hostname"},
        {**env, "time": "yesterday"},
        {**env, "command": "status"},
        {**env, "data": {k: v for k, v in env["data"].items() if k != "layouts"}},
        {**env, "status": "error"},  # an error with no errors
        {**env, "extra": 1},
    ):
        assert list(validator.iter_errors(broken)), broken


# -- the queue file -------------------------------------------------------------------


def _queue_errors(doc: dict[str, Any]) -> list[str]:
    return [e.message for e in _validator("queue.schema.json").iter_errors(doc)]


def test_examples_are_valid_queues() -> None:
    examples = sorted((ROOT / "examples").glob("*.toml"))
    assert examples
    for path in examples:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
        assert not _queue_errors(doc), path.name


GOOD = 'version = 1\n[[job]]\nname = "a"\ncommand = ["python", "-c", "pass"]\n'


@pytest.mark.parametrize(
    "extra, valid",
    [
        ("", True),
        ('arrival = "90s"\n', True),
        ("arrival = 30\n", True),
        ('arrival = "soon"\n', False),
        ('memory = "8GiB"\n', True),
        ('memory = "8 parsecs"\n', False),
        ('hang_timeout = "15m"\n', True),
        ('progress = "tqdm"\n', True),
        ('progress = "magic"\n', False),
        ("steps = 0\n", False),
        ("retries = -1\n", False),
        ('colour = "red"\n', False),
        ("shell = true\n", False),  # shell = true needs a string command
        ('[job.checkpoint]\nsignal = "SIGUSR1"\ngrace = "60s"\n', True),
        ('[job.checkpoint]\nsignal = "SIGKILL"\n', False),
        ('[job.checkpoint]\nwhen = "now"\n', False),
    ],
)
def test_queue_schema_mirrors_the_loader(tmp_path: Path, extra: str, valid: bool) -> None:
    text = GOOD + extra
    doc = tomllib.loads(text)
    assert (not _queue_errors(doc)) == valid, _queue_errors(doc)
    # The loader, which the schema mirrors, agrees.
    path = tmp_path / "q.toml"
    path.write_text(text)
    if valid:
        load_queue(path)
    else:
        with pytest.raises(BadInput):
            load_queue(path)


@pytest.mark.parametrize(
    "doc",
    [
        {"job": [{"name": "a", "command": ["x"]}]},  # no version
        {"version": 2, "job": [{"name": "a", "command": ["x"]}]},
        {"version": 1, "job": []},
        {"version": 1, "job": [{"name": "-bad", "command": ["x"]}]},
        {"version": 1, "job": [{"name": "a"}]},
        {"version": 1, "job": [{"name": "a", "command": "python x.py"}]},  # string, no shell
        {"version": 1, "job": [{"name": "a", "command": []}]},
        {"version": 1, "jobs": [{"name": "a", "command": ["x"]}]},
    ],
)
def test_invalid_queues_are_refused(doc: dict[str, Any]) -> None:
    assert _queue_errors(doc)
