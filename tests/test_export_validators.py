"""The hand-off checked by the real tools: kubernetes-validate (the API's own JSON schemas,
strict), Kubernetes' name rules, and nvidia-mig-parted where it is installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from miso_cli.export import handoff as ex
from tests.conftest import parse_envelope
from tests.test_export import PLAN, QUEUE
from tests.test_export_cluster import ME_PLAN, ME_QUEUE

kv = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is a test extra: pip install -e '.[test]'"
)

# Kubernetes' validation rules, as k8s.io/apimachinery/pkg/util/validation spells them.
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # max 63
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")  # name part, max 63
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")  # max 63


def _qualified(key: str) -> bool:
    """IsQualifiedName: [prefix/]name, the prefix a DNS-1123 subdomain (<= 253)."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        return False
    return len(name) <= 63 and bool(QUALIFIED_NAME.match(name))


def _resource_name_ok(key: str) -> bool:
    """An extended resource name: a qualified name with a domain outside kubernetes.io
    (validation.go: validateResourceName / IsExtendedResourceName)."""
    prefix, _, _ = key.rpartition("/")
    return (
        _qualified(key)
        and bool(prefix)
        and not prefix.endswith("kubernetes.io")
        and not key.startswith("requests.")
    )


def _docs(tmp_path: Path, cli, plan: dict[str, Any], queue: str, *extra: str) -> list[dict]:
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(plan))
    q = tmp_path / "q.toml"
    q.write_text(queue)
    code, out, err = cli(
        "export", "-f", "k8s", "--plan", str(p), "--queue", str(q), "--image", "img:1",
        "--node", "gpu-node-1", *extra,
    )  # fmt: skip
    assert code == 0, err
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("version", ["1.27", "1.30", "1.37"])
@pytest.mark.parametrize("which", ["plan", "me"])
def test_kubernetes_validate_strict(cli, tmp_path: Path, version: str, which: str) -> None:
    plan, queue = (PLAN, QUEUE) if which == "plan" else (ME_PLAN, ME_QUEUE)
    docs = _docs(tmp_path, cli, plan, queue)
    assert {d["kind"] for d in docs} == {"ConfigMap", "Job"}
    for doc in docs:
        kv.validate(doc, version, strict=True)  # raises ValidationError on any fault


def test_kubernetes_validate_rejects_what_it_should(cli, tmp_path: Path) -> None:
    """The validator is live: a field Kubernetes does not know fails strict validation."""
    doc = _docs(tmp_path, cli, PLAN, QUEUE)[1]
    doc["spec"]["template"]["spec"]["containers"][0]["workdir"] = "/x"
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, "1.30", strict=True)


def test_names_labels_and_resources_follow_kubernetes_rules(cli, tmp_path: Path) -> None:
    # The longest, oddest job name a queue allows (64 of letters, digits, '.', '_', '-').
    odd = QUEUE.replace('name = "Extra.Job"', 'name = "Extra.Job_Under__-' + "X" * 38 + '"')
    plan = json.loads(json.dumps(PLAN))
    for plan_, queue in ((plan, odd), (ME_PLAN, ME_QUEUE)):
        for doc in _docs(tmp_path, cli, plan_, queue):
            meta = doc["metadata"]
            if doc["kind"] == "Job":  # Job names become pod label values: DNS-1123 labels
                assert DNS1123_LABEL.match(meta["name"]) and len(meta["name"]) <= 63
            else:
                assert DNS1123_SUBDOMAIN.match(meta["name"]) and len(meta["name"]) <= 253
            assert DNS1123_LABEL.match(meta["namespace"])
            labels = dict(meta.get("labels", {}))
            if doc["kind"] == "Job":
                labels.update(doc["spec"]["template"]["metadata"]["labels"])
                pod = doc["spec"]["template"]["spec"]
                for k, v in pod.get("nodeSelector", {}).items():
                    assert _qualified(k) and LABEL_VALUE.match(v) and len(v) <= 63
                    assert DNS1123_SUBDOMAIN.match(v)  # a node name
                for c in pod["containers"]:
                    assert DNS1123_LABEL.match(c["name"])
                    for key in c["resources"]["limits"]:
                        assert _resource_name_ok(key), key
                for vol in pod.get("volumes", []):
                    assert DNS1123_LABEL.match(vol["name"])
            for k, v in labels.items():
                assert _qualified(k), k
                assert LABEL_VALUE.match(v) and len(v) <= 63, v
            for k in meta.get("annotations", {}):
                assert _qualified(k), k
    # The node label value miso asks the admin to set is a valid label value.
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(PLAN))
    code, out, _ = cli("export", "-f", "k8s", "--plan", str(p), "--json")
    value = parse_envelope(out)["data"]["label"]["value"]
    assert LABEL_VALUE.match(value) and len(value) <= 63
    assert not _resource_name_ok("nvidia.com/mig-1g.10gb+me")  # why '+' had to go


# -- nvidia-mig-parted ----------------------------------------------------------------


def _fake_mig_parted(tmp_path: Path, rc: int) -> Path:
    """A stand-in that records its arguments and exits ``rc`` (the real one is used below
    when installed)."""
    exe = tmp_path / "bin" / "nvidia-mig-parted"
    exe.parent.mkdir(exist_ok=True)
    exe.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > "{tmp_path}/args"\n'
        'while [ $# -gt 0 ]; do [ "$1" = -f ] && cp "$2" '
        + f'"{tmp_path}/seen.yaml"; shift; done\n'
        f"echo checked; exit {rc}\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_export_runs_mig_parted_valid_config_when_on_path(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = _fake_mig_parted(tmp_path, 0)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(PLAN))
    code, out, _ = cli("export", "-f", "k8s", "--plan", str(p), "--json")
    assert code == 0
    data = parse_envelope(out)["data"]
    assert data["validated"]["ok"] is True
    args = (tmp_path / "args").read_text().split()
    assert args[:2] == ["assert", "--valid-config"]
    assert args[args.index("-c") + 1] == data["node_config"]
    seen = yaml.safe_load((tmp_path / "seen.yaml").read_text())
    assert data["node_config"] in seen["mig-configs"] and "all-disabled" in seen["mig-configs"]
    # A config mig-parted refuses is miso's bug: an error, never a silent hand-off.
    _fake_mig_parted(tmp_path, 1)
    code, out, err = cli("export", "-f", "mig-parted", "--plan", str(p), "--json")
    assert code != 0 and "nvidia-mig-parted refuses" in err


def test_without_mig_parted_the_export_says_so(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-mig-parted here
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(PLAN))
    code, out, _ = cli("export", "--plan", str(p), "--json")
    assert code == 0
    assert parse_envelope(out)["data"]["validated"] == {
        "tool": "nvidia-mig-parted", "ok": None, "detail": "not on PATH"}  # fmt: skip


@pytest.mark.skipif(
    shutil.which("nvidia-mig-parted") is None,
    reason="nvidia-mig-parted is not installed (build it from NVIDIA/mig-parted to run this)",
)
@pytest.mark.parametrize("fmt", ["mig-parted", "k8s", "slurm"])
def test_real_mig_parted_accepts_every_export(tmp_path: Path, fmt: str) -> None:
    for plan in (PLAN, ME_PLAN):
        bundle = ex.export(ex.parse_plan(plan), fmt)
        text = ex.mig_parted_config_text(bundle)
        assert text is not None
        ok, detail = ex.run_mig_parted_check(text, bundle.summary["node_config"])
        assert ok, detail


def test_doctor_hook_runs_mig_parted_on_the_current_layout(tmp_path: Path) -> None:
    from miso_cli.gpu.nvml import open_driver

    drv = open_driver("sim:a100-40gb", tmp_path / "state")
    try:
        missing = ex.doctor_mig_parted_check(drv, binary=str(tmp_path / "absent"))
        assert missing["ok"] is False and "could not run" in missing["message"]
        fake = _fake_mig_parted(tmp_path, 0)
        result = ex.doctor_mig_parted_check(drv, binary=str(fake))
        assert result["ok"] is True and "accepts" in result["message"]
        seen = yaml.safe_load((tmp_path / "seen.yaml").read_text())
        assert seen["version"] == "v1"
        _fake_mig_parted(tmp_path, 1)
        assert ex.doctor_mig_parted_check(drv, binary=str(fake))["ok"] is False
    finally:
        drv.close()
    if shutil.which("nvidia-mig-parted"):
        drv = open_driver("sim:h100-80gb", tmp_path / "state2")
        try:
            assert ex.doctor_mig_parted_check(drv)["ok"] is True
        finally:
            drv.close()
