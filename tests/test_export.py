"""``miso export``: what is written parses back (PyYAML, shlex) and matches the plan."""

from __future__ import annotations

import json
import re
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from miso_cli.errors import BadInput
from miso_cli.export import handoff as ex
from miso_cli.gpu.layouts import enumerate_layouts
from miso_cli.gpu.profiles import MODELS
from tests.conftest import parse_envelope

A100 = MODELS["a100-40gb"]
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def _instances(tokens: list[str]) -> list[dict[str, Any]]:
    out = []
    for t in tokens:
        name, _, start = t.partition("@")
        p = A100.profile(name)
        out.append(
            {
                "profile": name,
                "slices": p.slices,
                "placement": {"start": int(start), "size": p.memory_slots},
            }
        )
    return out


PLAN: dict[str, Any] = {
    "gpus": [
        {
            "index": 0,
            "model": "a100-40gb",
            "mode": "mig",
            "layout": {
                "name": "4g.20gb+3g.20gb",
                "instances": _instances(["4g.20gb@0", "3g.20gb@4"]),
            },
            "assignment": [
                {
                    "job": "bert",
                    "profile": "4g.20gb",
                    "placement": {"start": 0, "size": 4},
                    "predicted_relative_step_time": 1.38,
                },
                {
                    "job": "resnet",
                    "profile": "3g.20gb",
                    "placement": {"start": 4, "size": 4},
                    "predicted_relative_step_time": 1.6,
                },
            ],
        },
        {
            "index": 1,
            "model": "a100-40gb",
            "mode": "mig",
            "layout": {
                "name": "3g.20gb+2g.10gb+2g.10gb",
                "instances": _instances(["2g.10gb@0", "2g.10gb@2", "3g.20gb@4"]),
            },
            "assignment": [
                {"job": "small", "profile": "2g.10gb", "placement": {"start": 0, "size": 2}}
            ],
        },
        {"index": 2, "model": "a100-40gb", "mode": "full", "assignment": [{"job": "big"}]},
    ],
    "waiting": ["gpt", "tiny"],
    "objective": "miso",
    "policy": "miso+",
    "predicted": {"mean_slowdown": 1.4, "mean_jct_s": 1234.0, "nopart_mean_jct_s": 2345.0},
}

QUEUE = """\
version = 1

[[job]]
name = "bert"
command = ["python", "-c", "print('it''s \\"quoted\\"')", "--lr", "1e-3"]
env = { WEIRD = "a: b # not a comment", QUOTE = "it's \\"x\\"", UNI = "héllo" }
[job.checkpoint]
signal = "SIGUSR1"
grace = "45s"

[[job]]
name = "resnet"
command = "echo $HOME && sleep 1"
shell = true
retries = 2

[[job]]
name = "small"
command = ["python", "-c", "pass"]

[[job]]
name = "big"
command = ["python", "-c", "pass"]

[[job]]
name = "gpt"
command = ["python", "-c", "pass"]
memory = "12GiB"

[[job]]
name = "tiny"
command = ["python", "-c", "pass"]
memory = "2GiB"

[[job]]
name = "Extra.Job"
command = ["python", "-c", "pass"]
"""


@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    p = tmp_path / "plan.json"
    # As `miso plan --json` prints it: the envelope around the plan.
    envelope = {"schema_version": 1, "command": "plan", "status": "ok", "data": PLAN, "errors": []}
    p.write_text(json.dumps(envelope))
    return p


@pytest.fixture
def queue_file(tmp_path: Path) -> Path:
    p = tmp_path / "queue.toml"
    p.write_text(QUEUE)
    return p


def _plan_counts() -> dict[int, dict[str, int]]:
    out = {}
    for g in PLAN["gpus"]:
        if g["mode"] == "mig":
            out[g["index"]] = dict(Counter(i["profile"] for i in g["layout"]["instances"]))
    return out


def _check_mig_parted(doc: dict[str, Any], node_config: str, n_gpus: int) -> None:
    """mig-parted's schema, and the node config sets each GPU as the plan says."""
    assert doc["version"] == "v1"
    configs = doc["mig-configs"]
    for name, entries in configs.items():
        assert LABEL_VALUE.match(name) and len(name) <= 63, name
        for e in entries:
            assert set(e) <= {"devices", "mig-enabled", "mig-devices", "device-filter"}
            assert "devices" in e and "mig-enabled" in e
            assert e["devices"] == "all" or all(isinstance(d, int) for d in e["devices"])
            if e["mig-enabled"]:
                assert isinstance(e["mig-devices"], dict)
            else:
                assert "mig-devices" not in e
    covered: dict[int, dict[str, Any]] = {}
    for e in configs[node_config]:
        devices = range(n_gpus) if e["devices"] == "all" else e["devices"]
        for d in devices:
            assert d not in covered, f"GPU {d} set twice"
            covered[d] = e
    assert sorted(covered) == list(range(n_gpus))
    return None


def test_mig_parted_from_plan(cli, plan_file: Path) -> None:
    code, out, _ = cli("export", "--format", "mig-parted", "--plan", str(plan_file), "--json")
    assert code == 0
    data = parse_envelope(out)["data"]
    doc = yaml.safe_load(data["files"]["mig-parted.yaml"])
    _check_mig_parted(doc, data["node_config"], 3)
    counts = _plan_counts()
    node = {}
    for e in doc["mig-configs"][data["node_config"]]:
        for d in e["devices"]:
            node[d] = e
    for idx, want in counts.items():
        assert node[idx]["mig-enabled"] is True
        assert node[idx]["mig-devices"] == want
    assert node[2]["mig-enabled"] is False
    # One named config per distinct layout, naming the GPUs that have it.
    per_gpu = data["per_gpu"]
    assert len(set(per_gpu.values())) == 3
    for idx, name in per_gpu.items():
        (entry,) = doc["mig-configs"][name]
        assert entry["devices"] == [int(idx)]
        if int(idx) in counts:
            assert entry["mig-devices"] == counts[int(idx)]


def test_mig_parted_stdout_is_the_config(cli, plan_file: Path) -> None:
    code, out, _ = cli("export", "--plan", str(plan_file))
    assert code == 0
    doc = yaml.safe_load(out)
    assert doc["version"] == "v1" and doc["mig-configs"]


def test_same_layout_everywhere_is_devices_all(cli, tmp_path: Path) -> None:
    plan = {"gpus": [{"index": i, "layout": ["3g.20gb@0", "3g.20gb@4"]} for i in range(4)]}
    p = tmp_path / "p.json"
    p.write_text(json.dumps(plan))
    code, out, _ = cli("export", "--plan", str(p), "--json")
    assert code == 0
    data = parse_envelope(out)["data"]
    doc = yaml.safe_load(data["files"]["mig-parted.yaml"])
    assert list(doc["mig-configs"]) == [data["node_config"]] == ["miso-2x3g.20gb"]
    (entry,) = doc["mig-configs"]["miso-2x3g.20gb"]
    assert entry == {"devices": "all", "mig-enabled": True, "mig-devices": {"3g.20gb": 2}}


def test_config_name_option(cli, plan_file: Path) -> None:
    code, out, _ = cli("export", "--plan", str(plan_file), "--config-name", "night-shift", "--json")
    assert code == 0
    data = parse_envelope(out)["data"]
    assert data["node_config"] == "night-shift"
    assert "night-shift" in yaml.safe_load(data["files"]["mig-parted.yaml"])["mig-configs"]
    code, _, err = cli("export", "--plan", str(plan_file), "--config-name", "Bad Name!")
    assert code == 2 and "--config-name" in err


def _k8s_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def test_k8s_from_plan_and_queue(cli, plan_file: Path, queue_file: Path) -> None:
    code, out, _ = cli(
        "export", "-f", "k8s", "--plan", str(plan_file), "--queue", str(queue_file),
        "--image", "nvcr.io/nvidia/pytorch:24.05-py3", "--node", "gpu-node-1",
    )  # fmt: skip
    assert code == 0
    docs = _k8s_docs(out)
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    jobs = {d["metadata"]["annotations"]["miso/job-name"]: d for d in docs if d["kind"] == "Job"}
    assert cm["apiVersion"] == "v1" and cm["metadata"]["namespace"] == "gpu-operator"
    config = yaml.safe_load(cm["data"]["config.yaml"])
    # The label written in the steps selects a config of the ConfigMap.
    m = re.search(r"nvidia\.com/mig\.config=(\S+)", out)
    assert m and m.group(1) in config["mig-configs"]
    _check_mig_parted(config, m.group(1), 3)
    assert set(jobs) == {"bert", "resnet", "small", "big", "gpt", "tiny", "Extra.Job"}
    want = {"bert": "4g.20gb", "resnet": "3g.20gb", "small": "2g.10gb"}
    for name, profile in want.items():
        limits = jobs[name]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits == {f"nvidia.com/mig-{profile}": 1}
    big = jobs["big"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert big == {"nvidia.com/gpu": 1}

    # Waiting jobs: the smallest slice that holds their memory; unknown memory: the largest.
    def limit(name: str) -> str:
        (key,) = jobs[name]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        return key

    assert limit("gpt") == "nvidia.com/mig-3g.20gb"
    assert limit("tiny") == "nvidia.com/mig-2g.10gb"
    assert limit("Extra.Job") == "nvidia.com/gpu"
    for d in jobs.values():
        assert d["apiVersion"] == "batch/v1"
        assert DNS1123.match(d["metadata"]["name"]) and len(d["metadata"]["name"]) <= 63
        pod = d["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        assert pod["nodeSelector"] == {"kubernetes.io/hostname": "gpu-node-1"}
    bert = jobs["bert"]["spec"]["template"]["spec"]
    c = bert["containers"][0]
    # Kubernetes stops a pod with SIGTERM; bert checkpoints on SIGUSR1: a wrapper turns one
    # into the other, then runs the job's own argv.
    assert c["command"][:2] == ["/bin/sh", "-c"] and c["command"][3] == "USR1"
    assert c["command"][4:] == ["python", "-c", "print('it''s \"quoted\"')", "--lr", "1e-3"]
    assert jobs["bert"]["metadata"]["annotations"]["miso/checkpoint-signal"] == "SIGUSR1"
    # The job runs where the queue said, with that directory mounted from the node.
    assert c["workingDir"] == str(queue_file.parent)
    assert c["volumeMounts"] == [{"name": "workdir", "mountPath": str(queue_file.parent)}]
    assert bert["volumes"] == [
        {"name": "workdir", "hostPath": {"path": str(queue_file.parent), "type": "Directory"}}
    ]
    assert {e["name"]: e["value"] for e in c["env"]} == {
        "WEIRD": "a: b # not a comment",
        "QUOTE": 'it\'s "x"',
        "UNI": "héllo",
    }
    assert bert["terminationGracePeriodSeconds"] == 45
    resnet = jobs["resnet"]
    assert resnet["spec"]["backoffLimit"] == 2
    assert resnet["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "/bin/sh", "-c", "echo $HOME && sleep 1",
    ]  # fmt: skip


def test_k8s_files_and_json(cli, plan_file: Path, queue_file: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "k8s"
    code, out, _ = cli(
        "export", "-f", "k8s", "--plan", str(plan_file), "--queue", str(queue_file),
        "--image", "img:1", "--out", str(out_dir), "--json",
    )  # fmt: skip
    assert code == 0
    data = parse_envelope(out)["data"]
    assert data["label"]["key"] == "nvidia.com/mig.config"
    for rel in data["files"]:
        assert (out_dir / rel).read_text() == data["files"][rel]
    for j in data["jobs"]:
        doc = yaml.safe_load((out_dir / j["file"]).read_text())
        (res,) = doc["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert res == j["resource"]
        assert "nodeSelector" not in doc["spec"]["template"]["spec"]  # no --node given


def test_k8s_needs_image_for_jobs(cli, plan_file: Path, queue_file: Path) -> None:
    code, out, err = cli(
        "export", "-f", "k8s", "--plan", str(plan_file), "--queue", str(queue_file), "--json"
    )
    assert code == 2
    assert parse_envelope(out)["errors"][0]["code"] == "USAGE"
    # A plan alone has no commands: the layout parts only, and a warning saying why.
    code, out, _ = cli("export", "-f", "k8s", "--plan", str(plan_file), "--json")
    assert code == 0
    data = parse_envelope(out)["data"]
    assert not any(k.startswith("jobs/") for k in data["files"])
    assert data["warnings"] and all(j["file"] is None for j in data["jobs"])


def test_slurm_from_plan_and_queue(cli, plan_file: Path, queue_file: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "slurm"
    code, out, _ = cli(
        "export", "-f", "slurm", "--plan", str(plan_file), "--queue", str(queue_file),
        "--node", "n1", "--out", str(out_dir), "--json",
    )  # fmt: skip
    assert code == 0
    data = parse_envelope(out)["data"]
    gres_conf = (out_dir / "gres.conf").read_text()
    assert "AutoDetect=nvml" in [ln.strip() for ln in gres_conf.splitlines()]
    frag = (out_dir / "slurm.conf.fragment").read_text()
    assert "GresTypes=gpu" in frag.splitlines()
    (node_line,) = [ln for ln in frag.splitlines() if ln.startswith("NodeName=")]
    m = re.fullmatch(r"NodeName=n1 Gres=(\S+)", node_line)
    assert m
    gres = {}
    for item in m.group(1).split(","):
        _, typ, n = item.split(":")
        gres[typ] = int(n)
    want: Counter[str] = Counter()
    for counts in _plan_counts().values():
        want.update(counts)
    want["a100-sxm4-40gb"] += 1  # GPU 2 stays whole
    assert gres == dict(want)
    # The steps: drain, wait, apply the node config, restart slurmd, resume; runnable sh.
    script = (out_dir / "reconfigure.sh").read_text()
    assert script.startswith("#!/bin/sh\n")
    assert (out_dir / "reconfigure.sh").stat().st_mode & 0o111
    steps = "\n".join(ln for ln in script.splitlines() if not ln.startswith("#"))
    order = ["State=DRAIN", "squeue", "nvidia-mig-parted apply", "restart slurmd", "State=RESUME"]
    positions = [steps.index(s) for s in order]
    assert positions == sorted(positions)
    assert f"CONFIG={data['node_config']}" in steps
    doc = yaml.safe_load((out_dir / "mig-parted.yaml").read_text())
    _check_mig_parted(doc, data["node_config"], 3)
    # One sbatch script per job, asking for its slice type, running its command.
    scripts = {j["job"]: j for j in data["jobs"]}
    assert set(scripts) == {"bert", "resnet", "small", "big", "gpt", "tiny", "Extra.Job"}
    expect = {"bert": "gpu:4g.20gb:1", "resnet": "gpu:3g.20gb:1", "small": "gpu:2g.10gb:1",
              "big": "gpu:a100-sxm4-40gb:1", "gpt": "gpu:3g.20gb:1", "tiny": "gpu:2g.10gb:1",
              # waiting for a whole GPU: typed, so it cannot land on a slice
              "Extra.Job": "gpu:a100-sxm4-40gb:1"}  # fmt: skip
    for name, gres_req in expect.items():
        assert scripts[name]["gres"] == gres_req
        text = (out_dir / scripts[name]["file"]).read_text()
        assert f"#SBATCH --gres={gres_req}" in text.splitlines()
        assert gres_req.split(":")[1] in gres or gres_req == "gpu:1"
    bert = (out_dir / scripts["bert"]["file"]).read_text().splitlines()
    (exec_line,) = [ln for ln in bert if ln.startswith("exec ")]
    assert shlex.split(exec_line)[1:] == [
        "python",
        "-c",
        "print('it''s \"quoted\"')",
        "--lr",
        "1e-3",
    ]
    env = dict(
        shlex.split(ln[len("export ") :])[0].split("=", 1)
        for ln in bert
        if ln.startswith("export ")
    )
    assert env == {"WEIRD": "a: b # not a comment", "QUOTE": 'it\'s "x"', "UNI": "héllo"}
    assert any(ln == f"#SBATCH --chdir={queue_file.parent}" for ln in bert)


def test_queue_job_missing_from_plan_is_bad_input(cli, tmp_path: Path, plan_file: Path) -> None:
    q = tmp_path / "other.toml"
    q.write_text('version = 1\n[[job]]\nname = "bert"\ncommand = ["python", "-c", "pass"]\n')
    code, out, err = cli("export", "--plan", str(plan_file), "--queue", str(q), "--json")
    assert code == 3
    assert "resnet" in parse_envelope(out)["errors"][0]["message"]


@pytest.mark.parametrize(
    "plan, needle",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"gpus": "x"}), "gpus"),
        (json.dumps({"gpus": [{"index": 0, "model": "a100-40gb",
                               "layout": ["2g.10gb@6"]}]}), "slot 6"),
        (json.dumps({"gpus": [{"index": 0, "model": "a100-40gb",
                               "layout": ["4g.20gb", "4g.20gb"]}]}), "does not fit"),
        (json.dumps({"gpus": [{"index": 0, "layout": ["9g.99gb"]}]}), "9g.99gb"),
        (json.dumps({"gpus": [{"index": 0, "layout": ["3g.20gb"],
                               "assignment": [{"job": "a", "profile": "1g.5gb"}]}]}), "1g.5gb"),
        (json.dumps({"gpus": [{"index": 0, "layout": ["3g.20gb"],
                               "assignment": [{"job": "a", "profile": "3g.20gb"}]}],
                     "waiting": ["a"]}), "also assigned"),
        (json.dumps({"gpus": [{"index": 0}, {"index": 0}]}), "twice"),
        (json.dumps({"gpus": [{"index": 0, "mode": "weird"}]}), "mode"),
        (json.dumps({"schema_version": 1, "status": "error", "data": {}, "errors": []}), "error"),
    ],
)  # fmt: skip
def test_bad_plans(cli, tmp_path: Path, plan: str, needle: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text(plan)
    code, out, err = cli("export", "--plan", str(p), "--json")
    assert code == 3, err
    env = parse_envelope(out)
    assert env["errors"][0]["code"] == "BAD_INPUT"
    assert needle in env["errors"][0]["message"]
    assert "Traceback" not in err


def test_missing_plan_file(cli, tmp_path: Path) -> None:
    code, _, err = cli("export", "--plan", str(tmp_path / "nope.json"))
    assert code == 3 and "nope.json" in err


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=8))
def test_any_layouts_round_trip(picks: list[int]) -> None:
    layouts = enumerate_layouts(A100)
    chosen = [layouts[p % len(layouts)] for p in picks]
    plan = {
        "gpus": [
            {"index": i, "model": "a100-40gb", "layout": lay.to_json()}
            for i, lay in enumerate(chosen)
        ]
    }
    handoff = ex.parse_plan(plan)
    for fmt in ("mig-parted", "slurm"):
        bundle = ex.export(handoff, fmt, node="n1")
        doc = yaml.safe_load(bundle.files["mig-parted.yaml"])
        _check_mig_parted(doc, bundle.summary["node_config"], len(chosen))
        for e in doc["mig-configs"][bundle.summary["node_config"]]:
            devices = range(len(chosen)) if e["devices"] == "all" else e["devices"]
            for d in devices:
                assert e["mig-devices"] == chosen[d].counts()


def test_parse_plan_short_forms() -> None:
    h = ex.parse_plan({"gpus": [{"index": 0, "layout": ["3g.20gb@4", "4g.20gb@0"]}]})
    assert h.gpus[0].layout is not None
    assert h.gpus[0].layout.counts() == {"4g.20gb": 1, "3g.20gb": 1}
    assert h.gpus[0].model_key == "a100-40gb"  # the only model with both profiles
    with pytest.raises(BadInput):
        ex.parse_plan([1, 2])


def test_export_current_layout_of_simulated_gpu(cli, state_dir: Path) -> None:
    nvml = pytest.importorskip("miso_cli.gpu.nvml")
    from miso_cli.gpu.layouts import place

    drv = nvml.open_driver("sim:a100-40gbx2", state_dir)
    try:
        if not drv.gpu(0).mig_current:
            drv.set_mig_mode(0, True)
        layout = place(drv.gpu_model(0), ["3g.20gb", "2g.10gb", "1g.5gb"])
        for s in layout.slices:
            drv.create_instance(0, drv.gpu_model(0).profile(s.profile), s.placement)
        want0 = drv.current_layout(0).counts()
        mig1 = drv.gpu(1).mig_current
    finally:
        drv.close()
    code, out, err = cli("export", "--gpu", "sim:a100-40gbx2", "--json")
    assert code == 0, err
    data = parse_envelope(out)["data"]
    assert data["source"] == "current"
    doc = yaml.safe_load(data["files"]["mig-parted.yaml"])
    _check_mig_parted(doc, data["node_config"], 2)
    entries = doc["mig-configs"][data["node_config"]]
    by_dev = {}
    for e in entries:
        for d in range(2) if e["devices"] == "all" else e["devices"]:
            by_dev[d] = e
    assert by_dev[0]["mig-devices"] == want0
    assert by_dev[1]["mig-enabled"] is mig1


def test_queue_alone_is_planned_or_says_how(cli, queue_file: Path) -> None:
    code, out, _ = cli("export", "--queue", str(queue_file), "--json")
    assert code in (0, 3, 4)  # planned (miso_cli.commands.plan), or a clear input / GPU error
