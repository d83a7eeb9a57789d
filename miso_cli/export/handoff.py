"""Hand a plan to the engines users already run: mig-parted, Kubernetes, Slurm.

What is exported is a :class:`Handoff`: each GPU's mode and layout, and each
job with the slice it should get. It comes from a plan (``miso plan --json``
output, or the short ``{"gpus": [{"index": 0, "layout": ["3g.20gb@0"]}]}``
form), from a queue (planned here), or, with neither, from the GPUs' current
layout, as ``nvidia-mig-parted export`` does.

Formats (see ``docs/export.md``):

* ``mig-parted``: a ``version: v1`` config with one named config per distinct
  layout (the GPUs that have it as ``devices``), plus one config for the whole
  node when the GPUs differ. mig-parted records counts, not placements: the
  placements stay in miso's plan.
* ``k8s``: that config in a ConfigMap for the GPU Operator's MIG manager, the
  ``nvidia.com/mig.config`` node label to set, and one ``batch/v1`` Job per job
  asking for its slice as ``nvidia.com/mig-<profile>`` (mixed strategy).
* ``slurm``: ``gres.conf`` (``AutoDetect=nvml``), a ``slurm.conf`` fragment with
  the node's MIG GRES, one sbatch script per job (``--gres=gpu:<profile>:1``),
  and the drain / apply / resume steps for changing the node's layout (Slurm
  does not partition GPUs itself).

YAML is written by hand (PyYAML is not a run-time dependency): every string
scalar is emitted as a JSON string, which is a valid YAML double-quoted scalar.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miso_cli import __version__
from miso_cli.errors import BadInput, UsageError
from miso_cli.gpu.layouts import Layout, LayoutError, Slice, place
from miso_cli.gpu.profiles import MODELS, GpuModel

FORMATS = ("mig-parted", "k8s", "slurm")
SLURM_TYPES = ("bare", "model")
WORKDIR_VOLUMES = ("hostpath", "none")
MIG_CONFIG_LABEL = "nvidia.com/mig.config"
MIG_CONFIG_STATE_LABEL = "nvidia.com/mig.config.state"
DEFAULT_CONFIGMAP = "miso-mig-config"
DEFAULT_NAMESPACE = "gpu-operator"
_PROFILE_RE = re.compile(r"^\d+g\.\d+gb(\+me)?$")
_LABEL_MAX = 63  # Kubernetes label values and DNS-1123 labels
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)

# The GPU Operator's standard mig-parted entries that do not depend on the GPU model
# (assets/state-mig-manager/0400_configmap.yaml of NVIDIA/gpu-operator). The operator
# labels every MIG-capable node nvidia.com/mig.config=all-disabled
# (controllers/state_manager.go: migConfigDisabledValue), so a ConfigMap the MIG manager
# is pointed at must hold at least all-disabled, or mig-manager fails with
# "selected mig-config not present: all-disabled" (mig-parted assert.go).
OPERATOR_STANDARD_CONFIGS: dict[str, list[dict[str, Any]]] = {
    "all-disabled": [{"devices": "all", "mig-enabled": False}],
    "all-enabled": [{"devices": "all", "mig-enabled": True, "mig-devices": {}}],
}
# Names of the operator's own configs (all-disabled, all-1g.5gb, all-balanced, ...):
# miso never writes one of its layouts under such a name.
_OPERATOR_NAME = re.compile(r"^all-")

# PCI device ids (mig-parted's device-filter form) of the boards that share a model's
# MIG profile table, grouped as the GPU Operator's default ConfigMap groups them
# (assets/state-mig-manager/0400_configmap.yaml of NVIDIA/gpu-operator: "A100-40GB,
# A800-40GB", "H100-80GB, H800-80GB", ...). The first id of each model is the one
# miso_cli.gpu.profiles records for it; the others are its sibling boards.
_SIBLING_DEVICE_IDS: dict[str, tuple[int, ...]] = {
    "a100-40gb": (0x20B010DE, 0x20B110DE, 0x20F110DE, 0x20F610DE),
    "a100-80gb": (0x20B210DE, 0x20B510DE, 0x20F310DE, 0x20F510DE),
    "h100-80gb": (0x233010DE, 0x233110DE, 0x232210DE, 0x232410DE),
    "h100-94gb": (0x232110DE, 0x233A10DE),
    "h200-141gb": (0x233510DE, 0x233B10DE),
    "a30-24gb": (0x20B710DE,),
}


@dataclass
class GpuHandoff:
    index: int
    mode: str  # "mig", "full" or "mps"
    layout: Layout | None  # for "mig"
    model_key: str | None = None

    @property
    def mig_enabled(self) -> bool:
        return self.mode == "mig"


@dataclass
class JobHandoff:
    name: str
    profile: str | None  # MIG profile; None for a whole GPU
    gpu: int | None  # None while waiting
    placement: dict[str, int] | None = None
    waiting: bool = False
    predicted_relative_step_time: float | None = None
    spec: Any = None  # miso_cli.spec.queue.JobSpec when a queue was given


@dataclass
class Handoff:
    gpus: list[GpuHandoff]
    jobs: list[JobHandoff]
    source: str  # "plan", "queue" or "current"
    warnings: list[str] = field(default_factory=list)


@dataclass
class Bundle:
    """What an export produces: files by relative path, and a summary for --json."""

    files: dict[str, str]
    summary: dict[str, Any]
    executable: set[str] = field(default_factory=set)


# -- reading a plan ---------------------------------------------------------------


def load_plan(path: Path) -> Handoff:
    """Read a plan file: a ``miso plan --json`` envelope, its ``data``, or the short form."""
    from miso_cli.spec.textfile import read_text

    path = Path(path)
    text = read_text(path, "the plan")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(
            f"{path}:{exc.lineno}: not valid JSON: {exc.msg}",
            hint="pass the output of `miso plan QUEUE --json`",
        ) from None
    return parse_plan(doc, str(path))


def parse_plan(doc: Any, where: str = "plan") -> Handoff:
    """Validate a plan document (see :func:`load_plan`); every problem is a BadInput."""
    if isinstance(doc, dict) and "schema_version" in doc and "data" in doc:
        if doc.get("status") == "error":
            raise BadInput(f"{where}: the plan envelope reports an error, not a plan")
        doc = doc["data"]
    if not isinstance(doc, dict) or not isinstance(doc.get("gpus"), list):
        raise BadInput(f"{where}: expected an object with a 'gpus' list")
    gpus: list[GpuHandoff] = []
    jobs: list[JobHandoff] = []
    seen_gpu: set[int] = set()
    seen_job: set[str] = set()
    for gi, g in enumerate(doc["gpus"]):
        at = f"{where}: gpus[{gi}]"
        if not isinstance(g, dict):
            raise BadInput(f"{at}: expected an object")
        index = g.get("index", gi)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise BadInput(f"{at}.index: expected a GPU index (integer >= 0), got {index!r}")
        if index in seen_gpu:
            raise BadInput(f"{at}.index: GPU {index} appears twice")
        seen_gpu.add(index)
        model_key = g.get("model")
        if model_key is not None and not isinstance(model_key, str):
            raise BadInput(f"{at}.model: expected a string")
        model = MODELS.get(model_key.lower()) if model_key else None
        mode = g.get("mode", "mig")
        if mode not in ("mig", "full", "mps"):
            raise BadInput(f"{at}.mode: expected 'mig', 'full' or 'mps', got {mode!r}")
        layout = None
        if mode == "mig":
            layout = _parse_layout(
                g.get("layout", []), model, f"{at}.layout", strict_names=model_key is None
            )
            if model is None and model_key is None:
                model = _model_of([s.profile for s in layout.slices])
        gpus.append(GpuHandoff(index, mode, layout, model.key if model else model_key))
        for ai, a in enumerate(g.get("assignment", []) or []):
            jat = f"{at}.assignment[{ai}]"
            if not isinstance(a, dict) or not isinstance(a.get("job"), str) or not a["job"]:
                raise BadInput(f"{jat}: expected an object with a 'job' name")
            name = a["job"]
            if name in seen_job:
                raise BadInput(f"{jat}.job: job {name!r} is assigned twice")
            seen_job.add(name)
            profile = a.get("profile")
            if mode == "mig":
                if not isinstance(profile, str) or not profile:
                    raise BadInput(f"{jat}.profile: a job on a MIG GPU needs its slice profile")
                if layout is not None and profile not in layout.counts():
                    raise BadInput(
                        f"{jat}.profile: {profile!r} is not an instance of GPU {index}'s "
                        f"layout ({layout.name})"
                    )
            else:
                profile = None
            placement = a.get("placement")
            pred = a.get("predicted_relative_step_time")
            jobs.append(
                JobHandoff(
                    name,
                    profile,
                    index,
                    placement if isinstance(placement, dict) else None,
                    predicted_relative_step_time=(
                        float(pred) if isinstance(pred, (int, float)) else None
                    ),
                )
            )
    waiting = doc.get("waiting", []) or []
    if not isinstance(waiting, list) or not all(isinstance(w, str) for w in waiting):
        raise BadInput(f"{where}: waiting: expected a list of job names")
    for name in waiting:
        if name in seen_job:
            raise BadInput(f"{where}: waiting: job {name!r} is also assigned to a GPU")
        seen_job.add(name)
        jobs.append(JobHandoff(name, None, None, waiting=True))
    if not gpus:
        raise BadInput(f"{where}: the plan has no GPUs")
    gpus.sort(key=lambda g: g.index)
    return Handoff(gpus, jobs, "plan")


def _parse_layout(raw: Any, model: GpuModel | None, at: str, strict_names: bool = True) -> Layout:
    """A layout as ``Layout.to_json()``, its ``instances`` list, or ``["3g.20gb@0", ...]``."""
    if isinstance(raw, dict):
        raw = raw.get("instances")
    if not isinstance(raw, list):
        raise BadInput(f"{at}: expected a layout (a list of instances)")
    tokens: list[str] = []
    for k, item in enumerate(raw):
        if isinstance(item, str):
            token = item.strip()
        elif isinstance(item, dict) and isinstance(item.get("profile"), str):
            token = item["profile"]
            pl = item.get("placement")
            if isinstance(pl, dict) and isinstance(pl.get("start"), int):
                token += f"@{pl['start']}"
        else:
            raise BadInput(f'{at}[{k}]: expected a profile such as "3g.20gb@0" or an object')
        tokens.append(token)
    if model is None:
        model = _model_of(tokens)
    if model is not None:
        try:
            return place(model, tokens)
        except LayoutError as exc:
            raise BadInput(f"{at}: {exc}") from None
    # No known model: keep the names, check only their shape.
    slices = []
    for k, token in enumerate(tokens):
        name, _, start = token.partition("@")
        if not _PROFILE_RE.match(name):
            raise BadInput(f"{at}[{k}]: {name!r} is not a MIG profile name (like 3g.20gb)")
        if strict_names and not any(name in {p.name for p in m.profiles} for m in MODELS.values()):
            raise BadInput(
                f"{at}[{k}]: {name!r} is not a MIG profile of any known GPU model",
                hint="name the GPU model in the plan ('model': e.g. \"a100-40gb\")",
            )
        g = int(name.split("g", 1)[0])
        slices.append(Slice(int(start) if start.isdigit() else k, 0, name, g))
    return Layout.of(slices)


def _model_of(tokens: list[str]) -> GpuModel | None:
    """The one known GPU model that has every profile named (None if none or several)."""
    names = {t.partition("@")[0] for t in tokens}
    if not names:
        return None
    matches = [m for m in MODELS.values() if names <= {p.name for p in m.profiles}]
    return matches[0] if len(matches) == 1 else None


def from_driver(drv: Any) -> Handoff:
    """The GPUs' current modes and layouts (what ``nvidia-mig-parted export`` reports)."""
    gpus = []
    for i in range(drv.device_count()):
        info = drv.gpu(i)
        if info.mig_capable and info.mig_current:
            gpus.append(GpuHandoff(i, "mig", drv.current_layout(i), info.model_key))
        else:
            gpus.append(GpuHandoff(i, "full", None, info.model_key))
    warnings = []
    for i in range(drv.device_count()):
        info = drv.gpu(i)
        if info.mig_capable and info.mig_current != info.mig_pending:
            warnings.append(
                f"GPU {i}: MIG mode change pending; exported the current mode "
                f"({'on' if info.mig_current else 'off'})"
            )
    return Handoff(gpus, [], "current", warnings)


def attach_queue(handoff: Handoff, queue: Any) -> None:
    """Give each job its queue entry (command, env, ...); queue jobs not in the plan wait."""
    by_name = {j.name: j for j in queue.jobs}
    names = set()
    for job in handoff.jobs:
        if job.name not in by_name:
            raise BadInput(
                f"{queue.path}: the plan's job {job.name!r} is not in this queue",
                hint="pass the queue the plan was made from",
            )
        job.spec = by_name[job.name]
        names.add(job.name)
    for spec in queue.jobs:
        if spec.name not in names:
            handoff.jobs.append(JobHandoff(spec.name, None, None, waiting=True, spec=spec))


def plan_queue(queue: Any, gpu_spec: str | None, state_dir: Path) -> Handoff:
    """Plan ``queue`` on the GPUs as ``miso plan`` does, and hand off the result."""
    # The planning path of `miso plan`: queue + GPUs + profiles -> its --json data.
    from miso_cli.commands.plan import queue_plan_data

    data = queue_plan_data(queue, gpu_spec, state_dir)
    handoff = parse_plan(data, f"plan of {queue.path}")
    handoff.source = "queue"
    attach_queue(handoff, queue)
    return handoff


# -- naming -----------------------------------------------------------------------


def _slug(text: str, limit: int = _LABEL_MAX) -> str:
    """A DNS-1123 label / label value: lowercase letters, digits, '-', '.'; <= 63 chars."""
    s = re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-.")
    s = re.sub(r"-{2,}", "-", s) or "x"
    if len(s) > limit:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        s = s[: limit - 9].rstrip("-.") + "-" + digest
    return s


def layout_key(gpu: GpuHandoff) -> tuple[Any, ...]:
    """GPUs with equal keys get the same mig-parted entry (counts, as mig-parted records)."""
    if not gpu.mig_enabled or gpu.layout is None:
        return ("off",)
    return ("mig", tuple(sorted(gpu.layout.counts().items())))


def config_name(key: tuple[Any, ...]) -> str:
    """``miso-3g.20gb-2x2g.10gb``, ``miso-mig-empty`` or ``miso-mig-disabled``."""
    if key[0] == "off":
        return "miso-mig-disabled"
    counts = dict(key[1])
    if not counts:
        return "miso-mig-empty"
    order = sorted(counts, key=lambda p: (-_slices_of(p), p))
    parts = [(f"{counts[p]}x{p}" if counts[p] > 1 else p).replace("+", "-") for p in order]
    return _slug("miso-" + "-".join(parts))


def _slices_of(profile: str) -> int:
    m = re.match(r"(\d+)g", profile)
    return int(m.group(1)) if m else 0


def whole_gpu_type(model_key: str | None) -> str | None:
    """Slurm GRES type for an unpartitioned GPU: ``a100`` for a100-40gb (a substring of
    the name slurmd detects, e.g. nvidia_a100-sxm4-40gb)."""
    if not model_key:
        return None
    return model_key.split("-", 1)[0].lower() or None


# -- mig-parted -------------------------------------------------------------------


@dataclass
class MigConfigs:
    configs: dict[str, list[dict[str, Any]]]  # name -> entries (mig-parted's schema)
    node_config: str  # the config that sets every GPU of the node
    per_gpu: dict[int, str]  # GPU index -> config of its layout


def mig_configs(
    handoff: Handoff, node_config: str | None = None, *, device_filter: bool = False
) -> MigConfigs:
    """One config per distinct layout, plus one for the whole node when the GPUs differ.

    ``device_filter`` adds each entry's PCI device ids (for a ConfigMap shared by a
    cluster of different GPUs). ``node_config`` names the node's config; a name of the
    GPU Operator's (``all-...``) or of another of these configs is refused.
    """
    groups: dict[tuple[Any, ...], list[GpuHandoff]] = {}
    for g in handoff.gpus:
        groups.setdefault(layout_key(g), []).append(g)
    n_gpus = len(handoff.gpus)
    configs: dict[str, list[dict[str, Any]]] = {}
    per_gpu: dict[int, str] = {}
    entries = []
    for key, members in groups.items():
        group_entries = _entries(key, members, n_gpus, device_filter)
        entries += group_entries
        name = config_name(key)
        configs[name] = group_entries
        for g in members:
            per_gpu[g.index] = name
    if node_config is not None:
        check_config_name(node_config)
    if len(groups) == 1 and node_config in (None, next(iter(configs))):
        node = next(iter(configs))
    else:
        node = node_config or _slug("miso-node-" + _digest(entries))
        if node in configs:
            raise UsageError(
                f"--config-name {node!r}: that is the name of the config of another layout "
                f"in this export ({', '.join(configs)})",
                hint="choose a name of your own",
            )
        configs[node] = entries
    return MigConfigs(configs, node, per_gpu)


def check_config_name(name: str) -> None:
    """Refuse a config name that is not a label value or that the GPU Operator uses."""
    if _slug(name) != name:
        raise UsageError(
            f"--config-name {name!r}: must be a valid label value (lowercase letters, "
            "digits, '-', '.'; at most 63 characters)"
        )
    if _OPERATOR_NAME.match(name):
        raise UsageError(
            f"--config-name {name!r}: names starting with 'all-' are the GPU Operator's own "
            "configs (all-disabled, all-1g.5gb, all-balanced, ...)",
            hint="choose a name of your own, e.g. miso-" + name[4:],
        )


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def device_ids(model_key: str | None) -> list[str]:
    """``["0x20B010DE", ...]``: the PCI device ids of a model's boards, as device-filter
    writes them; empty when the model is unknown."""
    model = MODELS.get(model_key or "")
    if model is None:
        return []
    ids = list(_SIBLING_DEVICE_IDS.get(model.key, ()))
    if model.pci_device_id not in ids:
        ids.insert(0, model.pci_device_id)
    return [f"0x{i:08X}" for i in ids]


def _entries(
    key: tuple[Any, ...], members: list[GpuHandoff], n_gpus: int, device_filter: bool
) -> list[dict[str, Any]]:
    """The mig-parted entries of one layout: one, or one per GPU model with device-filter."""
    by_model: dict[str | None, list[GpuHandoff]] = {}
    for g in members:
        by_model.setdefault(g.model_key if device_filter else None, []).append(g)
    out = []
    for model_key, gs in by_model.items():
        entry: dict[str, Any] = {}
        ids = device_ids(model_key) if device_filter else []
        if ids:
            entry["device-filter"] = ids
        entry.update(_entry(key, gs, n_gpus))
        out.append(entry)
    return out


def _entry(key: tuple[Any, ...], members: list[GpuHandoff], n_gpus: int) -> dict[str, Any]:
    indices = sorted(g.index for g in members)
    # "all" only when these are all the node's GPUs (0..n-1), as mig-parted export writes it.
    devices: Any = "all" if indices == list(range(n_gpus)) else indices
    if key[0] == "off":
        return {"devices": devices, "mig-enabled": False}
    return {"devices": devices, "mig-enabled": True, "mig-devices": dict(key[1])}


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _plain_or_q(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text) else _q(text)


def mig_parted_yaml(mc: MigConfigs | dict[str, list[dict[str, Any]]], header: list[str]) -> str:
    """A ``version: v1`` mig-parted config (mig-parted's api/spec/v1/spec.go schema)."""
    configs = mc.configs if isinstance(mc, MigConfigs) else mc
    lines = [f"# {h}" for h in header]
    lines += ["version: v1", "mig-configs:"]
    for name, entries in configs.items():
        lines.append(f"  {_plain_or_q(name)}:")
        for e in entries:
            first = True

            def put(text: str) -> None:
                nonlocal first
                lines.append(("    - " if first else "      ") + text)
                first = False

            if "device-filter" in e:
                df = e["device-filter"]
                if isinstance(df, str):
                    put(f"device-filter: {_q(df)}")
                else:
                    put("device-filter: [" + ", ".join(_q(str(d)) for d in df) + "]")
            devices = e["devices"]
            dev = "all" if devices == "all" else "[" + ", ".join(str(d) for d in devices) + "]"
            put(f"devices: {dev}")
            put(f"mig-enabled: {'true' if e['mig-enabled'] else 'false'}")
            if "mig-devices" in e:
                if e["mig-devices"]:
                    put("mig-devices:")
                    order = sorted(e["mig-devices"], key=lambda p: (-_slices_of(p), p))
                    for p in order:
                        lines.append(f"        {_q(p)}: {e['mig-devices'][p]}")
                else:
                    put("mig-devices: {}")
    return "\n".join(lines) + "\n"


def load_configmap(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The mig-parted configs of an existing ConfigMap (``kubectl get configmap NAME -o yaml``
    or ``-o json``) or of a bare mig-parted config file, checked as mig-parted checks them."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"{path}: cannot read the ConfigMap: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text") from None
    doc = _load_yaml_or_json(text, path)
    if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
        data = doc.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("config.yaml"), str):
            raise BadInput(
                f"{path}: the ConfigMap has no data key 'config.yaml'",
                hint="the GPU Operator's MIG manager reads its configs from that key",
            )
        doc = _load_yaml_or_json(data["config.yaml"], path, "data.config.yaml")
    return _check_mig_parted_doc(doc, f"{path}")


def _load_yaml_or_json(text: str, path: Path, where: str = "") -> Any:
    at = f"{path}" + (f": {where}" if where else "")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        import yaml  # optional: only reading an existing ConfigMap needs it
    except ImportError:
        raise UsageError(
            f"{at}: not JSON, and reading YAML needs PyYAML, which is not installed",
            hint="pip install pyyaml, or pass `kubectl get configmap NAME -o json` output",
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise BadInput(f"{at}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None


def _check_mig_parted_doc(doc: Any, where: str) -> dict[str, list[dict[str, Any]]]:
    if not isinstance(doc, dict) or doc.get("version") != "v1":
        raise BadInput(f"{where}: not a mig-parted config (expected 'version: v1')")
    extra = set(doc) - {"version", "mig-configs"}
    if extra:
        raise BadInput(f"{where}: unexpected field {sorted(extra)[0]!r}")
    configs = doc.get("mig-configs")
    if not isinstance(configs, dict) or not configs:
        raise BadInput(f"{where}: 'mig-configs' needs at least one entry")
    out: dict[str, list[dict[str, Any]]] = {}
    for name, entries in configs.items():
        at = f"{where}: mig-configs.{name}"
        if not isinstance(entries, list) or not entries:
            raise BadInput(f"{at}: needs at least one entry")
        checked = []
        for k, e in enumerate(entries):
            eat = f"{at}[{k}]"
            if not isinstance(e, dict):
                raise BadInput(f"{eat}: expected a mapping")
            unknown = set(e) - {"device-filter", "devices", "mig-enabled", "mig-devices"}
            if unknown:
                raise BadInput(f"{eat}: unexpected field {sorted(unknown)[0]!r}")
            for req in ("devices", "mig-enabled"):
                if req not in e:
                    raise BadInput(f"{eat}: missing required field {req!r}")
            devices = e["devices"]
            if devices != "all" and not (
                isinstance(devices, list)
                and all(isinstance(d, int) and not isinstance(d, bool) for d in devices)
            ):
                raise BadInput(f"{eat}.devices: expected 'all' or a list of GPU indices")
            if not isinstance(e["mig-enabled"], bool):
                raise BadInput(f"{eat}.mig-enabled: expected true or false")
            md = e.get("mig-devices")
            if md is not None and not (
                isinstance(md, dict)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in md.values())
            ):
                raise BadInput(f"{eat}.mig-devices: expected profile: count pairs")
            df = e.get("device-filter")
            if df is not None and not (
                isinstance(df, str)
                or (isinstance(df, list) and all(isinstance(d, str) for d in df))
            ):
                raise BadInput(f"{eat}.device-filter: expected a device id or a list of them")
            entry = {k2: e[k2] for k2 in ("device-filter", "devices", "mig-enabled") if k2 in e}
            if md is not None:
                entry["mig-devices"] = {str(p): int(n) for p, n in md.items()}
            checked.append(entry)
        out[str(name)] = checked
    return out


def merge_configs(
    ours: dict[str, list[dict[str, Any]]],
    existing: dict[str, list[dict[str, Any]]] | None,
) -> dict[str, list[dict[str, Any]]]:
    """The configs of the ConfigMap miso writes: the existing ones (or the operator's
    standard entries), then miso's; a name in both with other contents is refused."""
    base = dict(existing) if existing is not None else {}
    for name, entries in OPERATOR_STANDARD_CONFIGS.items():
        base.setdefault(name, entries)
    merged = dict(base)
    for name, entries in ours.items():
        if name in base and _canon(base[name]) != _canon(entries):
            raise UsageError(
                f"config {name!r} is already in the existing ConfigMap, with other contents",
                hint="name miso's node config with --config-name",
            )
        merged[name] = entries
    return merged


def _canon(entries: list[dict[str, Any]]) -> str:
    return json.dumps(entries, sort_keys=True)


# -- jobs -------------------------------------------------------------------------


def _resource_kinds(handoff: Handoff) -> list[tuple[str | None, float | None, int]]:
    """(profile or None for a whole GPU, memory MiB if known, compute slices) on offer."""
    kinds: dict[str | None, tuple[float | None, int]] = {}
    for g in handoff.gpus:
        model = MODELS.get(g.model_key or "")
        if g.mig_enabled and g.layout is not None:
            for s in g.layout.slices:
                mem = None
                if model is not None:
                    try:
                        mem = float(model.profile(s.profile).memory_mb)
                    except KeyError:
                        mem = None
                kinds[s.profile] = (mem, s.slices)
        else:
            kinds[None] = (float(model.memory_mb) if model else None, 99)
    return [(k, m, sl) for k, (m, sl) in kinds.items()]


def resolve_waiting(handoff: Handoff) -> None:
    """Give each waiting job the slice type it will queue for in the cluster engine.

    A job whose memory need is known asks for the smallest slice on offer that holds
    it; otherwise for the largest slice on offer (it fits wherever anything fits).
    """
    kinds = _resource_kinds(handoff)
    if not kinds:
        return
    for job in handoff.jobs:
        if not job.waiting:
            continue
        need = getattr(job.spec, "memory_mb", None) if job.spec is not None else None
        fitting = [k for k in kinds if need is None or (k[1] is not None and k[1] >= need)]
        if need is not None and fitting:
            choice = min(fitting, key=lambda k: (k[1] or 0.0, k[2]))
        else:
            choice = max(kinds, key=lambda k: (k[2], k[1] or 0.0))
            if need is not None:
                handoff.warnings.append(
                    f"job {job.name!r}: no slice on offer is known to hold its "
                    f"{need:.0f} MiB; it asks for the largest"
                )
        job.profile = choice[0]


def _job_name(name: str, used: set[str]) -> str:
    base = _slug("miso-" + name, 63 - 4)
    base = re.sub(r"[.]", "-", base)  # Job names are DNS-1123 labels: no dots
    out, n = base, 1
    while out in used:
        n += 1
        out = f"{base}-{n}"
    used.add(out)
    return out


def _argv(spec: Any) -> list[str] | None:
    if spec is None:
        return None
    if getattr(spec, "shell", False) or isinstance(spec.command, str):
        return ["/bin/sh", "-c", str(spec.command)]
    return [str(a) for a in spec.command]


# -- Kubernetes -------------------------------------------------------------------


def k8s_resource(profile: str | None) -> str:
    """The extended resource the NVIDIA device plugin advertises for a slice (mixed strategy).

    The plugin names it ``mig-<profile>`` with '+' turned into '.'
    (``strings.ReplaceAll("mig-"+p.String(), "+", ".")`` in internal/rm/rm.go of
    NVIDIA/k8s-device-plugin): ``1g.10gb+me`` -> ``nvidia.com/mig-1g.10gb.me``. '+' is
    not allowed in a Kubernetes resource name.
    """
    if not profile:
        return "nvidia.com/gpu"
    return "nvidia.com/mig-" + profile.replace("+", ".")


def k8s_node_name(node: str | None, warnings: list[str]) -> str | None:
    """A node name as Kubernetes has it: a lowercase DNS-1123 subdomain (the kubelet
    registers the host name in lowercase)."""
    if node is None:
        return None
    low = node.lower()
    if not _DNS1123_SUBDOMAIN.match(low) or len(low) > 253:
        raise UsageError(
            f"--node {node!r}: not a Kubernetes node name (lowercase letters, digits, '-' "
            "and '.', starting and ending with a letter or digit)",
            hint="use the name `kubectl get nodes` shows",
        )
    if low != node:
        warnings.append(f"--node {node!r}: Kubernetes node names are lowercase; wrote {low!r}")
    return low


# Runs the job's command and turns the SIGTERM that Kubernetes sends (pod deletion,
# preemption, eviction: then SIGKILL after terminationGracePeriodSeconds) into the
# queue's checkpoint signal. "$0" is the signal name, "$@" the job's argv. sh is PID 1
# in the container: without the trap it would ignore SIGTERM.
_SIGNAL_WRAPPER = (
    'sig="$0"; "$@" & child=$!; '
    'trap \'kill -s "$sig" "$child" 2>/dev/null\' TERM; '
    'while :; do wait "$child"; rc=$?; '
    'kill -0 "$child" 2>/dev/null || exit "$rc"; done'
)


def k8s_bundle(
    handoff: Handoff,
    *,
    node: str | None,
    namespace: str,
    job_namespace: str,
    configmap: str,
    image: str | None,
    node_config: str | None,
    existing: dict[str, list[dict[str, Any]]] | None = None,
    workdir_volume: str = "hostpath",
) -> Bundle:
    node = k8s_node_name(node, handoff.warnings)
    mc = mig_configs(handoff, node_config, device_filter=True)
    configs = merge_configs(mc.configs, existing)
    header = _header(handoff)
    config_text = mig_parted_yaml(configs, [])
    cm = [
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        f"  name: {_q(configmap)}",
        f"  namespace: {_q(namespace)}",
        "  labels:",
        '    app.kubernetes.io/managed-by: "miso"',
        "data:",
        "  config.yaml: |",
    ]
    cm += ["    " + ln if ln else "" for ln in config_text.rstrip("\n").split("\n")]
    node_ref = node or "<node>"
    patch = {
        "spec": {
            "mig": {"strategy": "mixed"},
            "migManager": {"config": {"name": configmap, "default": "all-disabled"}},
        }
    }
    resources = sorted({k8s_resource(j.profile) for j in handoff.jobs} - {"nvidia.com/gpu"})
    steps = [
        "1. Put the MIG manager's ConfigMap in place:",
        "  kubectl apply -f mig-config.yaml",
        "2. Point the GPU Operator's MIG manager at it and use the mixed MIG strategy (the",
        "   chart's default is single, under which no nvidia.com/mig-* resources exist):",
        "  kubectl patch clusterpolicies.nvidia.com/cluster-policy --type=merge "
        f"-p '{json.dumps(patch)}'",
        "   or, where the operator was installed with Helm:",
        f"  helm upgrade gpu-operator nvidia/gpu-operator -n {namespace} --reuse-values "
        f"--set mig.strategy=mixed --set migManager.config.name={configmap} "
        "--set migManager.config.create=false",
        "3. Select this layout on the node (mig-manager drains its GPU pods, applies it):",
        f"  kubectl label node {node_ref} {MIG_CONFIG_LABEL}={mc.node_config} --overwrite",
        "4. Wait until the MIG manager reports success:",
        f"  kubectl get node {node_ref} -o jsonpath="
        f"'{{.metadata.labels.nvidia\\.com/mig\\.config\\.state}}'   # until: success",
        "5. Check that the slices are offered"
        + (f" ({', '.join(resources)}):" if resources else ":"),
        f"  kubectl get node {node_ref} -o jsonpath='{{.status.allocatable}}'",
        "6. Submit the jobs:",
        "  kubectl apply -f jobs/",
    ]
    files: dict[str, str] = {
        "mig-config.yaml": "\n".join([f"# {h}" for h in header] + cm) + "\n",
    }
    job_summaries = []
    # A Job needs the job's command: only jobs that came with their queue entry get one.
    jobs = [j for j in handoff.jobs if j.spec is not None]
    if jobs and not image:
        raise UsageError(
            "--image is needed to write a Kubernetes Job for each job",
            hint="name the image the jobs run in, e.g. --image nvcr.io/nvidia/pytorch:24.05-py3",
        )
    if jobs and workdir_volume == "hostpath" and node is None:
        handoff.warnings.append(
            "no --node: each Job mounts its working directory from the host it lands on "
            "(hostPath); that directory must exist on every GPU node"
        )
    used: set[str] = set()
    for job in handoff.jobs:
        resource = k8s_resource(job.profile)
        kname = _job_name(job.name, used)
        fname: str | None = None
        if job.spec is not None:
            fname = f"jobs/{kname}.yaml"
            files[fname] = _k8s_job(
                job, kname, resource, image or "", node, job_namespace, workdir_volume
            )
        job_summaries.append(
            {
                "job": job.name,
                "name": kname,
                "resource": resource,
                "gpu": job.gpu,
                "waiting": job.waiting,
                "file": fname,
            }
        )
    files["STEPS.txt"] = "\n".join([f"# {h}" for h in header] + steps) + "\n"
    summary = {
        "configs": configs,
        "node_config": mc.node_config,
        "configmap": {"name": configmap, "namespace": namespace, "key": "config.yaml"},
        "clusterpolicy_patch": patch,
        "label": {"key": MIG_CONFIG_LABEL, "value": mc.node_config, "node": node},
        "jobs": job_summaries,
        "steps": steps,
    }
    return Bundle(files, summary)


def _k8s_job(
    job: JobHandoff,
    kname: str,
    resource: str,
    image: str,
    node: str | None,
    namespace: str,
    workdir_volume: str = "hostpath",
) -> str:
    spec = job.spec
    argv = _argv(spec) or []
    cwd = str(spec.cwd) if spec is not None and getattr(spec, "cwd", None) else None
    if cwd is not None and not cwd.startswith("/"):
        cwd = None  # a relative cwd means nothing inside a container
    checkpoint = getattr(spec, "checkpoint", None) if spec is not None else None
    signame = str(checkpoint.signal) if checkpoint is not None else "SIGTERM"
    lines = [
        "apiVersion: batch/v1",
        "kind: Job",
        "metadata:",
        f"  name: {kname}",
        f"  namespace: {_q(namespace)}",
        "  labels:",
        '    app.kubernetes.io/managed-by: "miso"',
        f"    miso/job: {_q(_slug(job.name))}",
        "  annotations:",
        f"    miso/job-name: {_q(job.name)}",
    ]
    if job.predicted_relative_step_time is not None:
        lines.append(
            f"    miso/predicted-relative-step-time: {_q(f'{job.predicted_relative_step_time:g}')}"
        )
    if cwd is not None:
        lines.append(f"    miso/host-cwd: {_q(cwd)}")
    if signame != "SIGTERM":
        lines.append(f"    miso/checkpoint-signal: {_q(signame)}")
    retries = int(getattr(spec, "retries", 0) or 0) if spec is not None else 0
    lines += [
        "spec:",
        f"  backoffLimit: {retries}",
        "  template:",
        "    metadata:",
        "      labels:",
        f"        miso/job: {_q(_slug(job.name))}",
        "    spec:",
        "      restartPolicy: Never",
    ]
    if checkpoint is not None:
        grace = int(round(float(checkpoint.grace_s)))
        lines.append(f"      terminationGracePeriodSeconds: {grace}")
    if node:
        lines += ["      nodeSelector:", f"        kubernetes.io/hostname: {_q(node)}"]
    lines += [
        "      containers:",
        "        - name: train",
        f"          image: {_q(image)}",
    ]
    if signame != "SIGTERM":
        # Kubernetes stops a pod with SIGTERM; the job checkpoints on another signal.
        sig = signame[3:] if signame.startswith("SIG") else signame
        argv = ["/bin/sh", "-c", _SIGNAL_WRAPPER, sig, *argv]
    if argv:
        lines.append("          command: [" + ", ".join(_q(a) for a in argv) + "]")
    if cwd is not None:
        lines.append(f"          workingDir: {_q(cwd)}")
    env = dict(getattr(spec, "env", {}) or {}) if spec is not None else {}
    if env:
        lines.append("          env:")
        for k, v in env.items():
            lines += [f"            - name: {_q(str(k))}", f"              value: {_q(str(v))}"]
    lines += [
        "          resources:",
        "            limits:",
        f"              {_q(resource)}: 1",
    ]
    if cwd is not None and workdir_volume == "hostpath":
        lines += [
            "          volumeMounts:",
            "            - name: workdir",
            f"              mountPath: {_q(cwd)}",
            "      volumes:",
            "        - name: workdir",
            "          hostPath:",
            f"            path: {_q(cwd)}",
            "            type: Directory",
        ]
    return "\n".join(lines) + "\n"


# -- Slurm ------------------------------------------------------------------------


def _round_half_away(x: float) -> int:
    # C's roundl(), as slurmd uses it; Python's round() rounds half to even.
    return int(math.floor(x + 0.5))


def slurm_detected_name(model: GpuModel, profile: str | None = None) -> str:
    """The GRES type slurmd's NVML autodetection gives a GPU or one of its MIG slices.

    As src/plugins/gpu/nvml/gpu_nvml.c of SchedMD/slurm builds it: the NVML device name,
    lowercased with spaces as '_' (gpu_common_underscorify_tolower); for a MIG slice the
    name is cut at its first '-' and ``_<slices>g.<GiB>gb`` appended, the memory being
    the slice's memorySizeMB / 1024, rounded (so an A100-40GB ``7g.40gb`` is detected as
    ``nvidia_a100_7g.39gb``, and ``+me`` is not part of the name).
    """
    name = model.name.lower().replace(" ", "_")
    if profile is None:
        return name
    p = model.profile(profile)
    return name.split("-", 1)[0] + f"_{p.slices}g.{_round_half_away(p.memory_mb / 1024)}gb"


def slurm_type(model: GpuModel | None, profile: str | None, *, prefixed: bool) -> str | None:
    """The GRES type miso writes: a substring of what slurmd detects (gres_gpu.c matches a
    configured type to a detected device by substring, longest types first)."""
    if model is None:
        if profile is None:
            return None
        return profile.split("+", 1)[0]  # unknown model: the profile name, unverified
    detected = slurm_detected_name(model, profile)
    base = detected[len("nvidia_") :] if detected.startswith("nvidia_") else detected
    if profile is None:
        # a100-sxm4-40gb has a '-', so it is in no MIG slice's name. Without a '-' (e.g.
        # nvidia_h100_80gb_hbm3) the whole GPU's name begins every slice's name: its type
        # is then the first word (h100), shorter than any slice type, so slurmd, which
        # tries the longest types first, gives each slice its own type before this one.
        return base if "-" in base else base.split("_", 1)[0]
    if prefixed:
        return base  # e.g. a100_3g.20gb
    return base.rsplit("_", 1)[1]  # e.g. 3g.20gb


def slurm_bundle(
    handoff: Handoff, *, node: str | None, node_config: str | None, types: str = "bare"
) -> Bundle:
    if types not in SLURM_TYPES:
        raise UsageError(f"--slurm-types {types!r}: expected one of {', '.join(SLURM_TYPES)}")
    prefixed = types == "model"
    empty = [g.index for g in handoff.gpus if g.mig_enabled and not (g.layout and g.layout.slices)]
    if empty:
        raise BadInput(
            f"GPU {', '.join(map(str, empty))}: MIG is on but the layout has no instances; "
            'slurmd with AutoDetect=nvml stops on such a GPU ("MIG mode is enabled, but no '
            'MIG devices were found")',
            hint="give the GPU instances in the plan, or plan it with MIG off (mode 'full')",
        )
    mc = mig_configs(handoff, node_config)
    header = _header(handoff)
    node_ref = node or "$(hostname -s)"
    gres_counts: Counter[str] = Counter()
    detected: dict[str, str] = {}
    untyped = 0
    unknown_model = False

    def gpu_type(g: GpuHandoff, profile: str | None) -> str | None:
        nonlocal unknown_model
        model = MODELS.get(g.model_key or "")
        if model is None:
            unknown_model = True
        t = slurm_type(model, profile, prefixed=prefixed)
        if t is not None and model is not None:
            detected[t] = slurm_detected_name(model, profile)
        return t

    for g in handoff.gpus:
        if g.mig_enabled and g.layout is not None:
            for s in g.layout.slices:
                t = gpu_type(g, s.profile)
                gres_counts[t or s.profile] += 1
        else:
            t = gpu_type(g, None)
            if t is None:
                t = whole_gpu_type(g.model_key)
            if t:
                gres_counts[t] += 1
            else:
                untyped += 1
    gres = [f"gpu:{t}:{n}" for t, n in sorted(gres_counts.items(), key=lambda kv: kv[0])]
    if untyped:
        gres.append(f"gpu:{untyped}")
    if unknown_model:
        handoff.warnings.append(
            "a GPU model is unknown: its GRES types are the profile names, not checked "
            "against the names slurmd detects (see `slurmd -G`)"
        )
    example = next(iter(sorted(detected.items())), None)
    gres_conf = [f"# {h}" for h in header] + [
        "# slurmd finds the GPUs and MIG instances through NVML once the layout is applied;",
        "# the node's gres.conf needs nothing else for them. `slurmd -G` prints what it finds.",
        "AutoDetect=nvml",
    ]
    tres = ",".join(["gres/gpu"] + [f"gres/gpu:{t}" for t in sorted(gres_counts)])
    slurm_conf = [f"# {h}" for h in header] + [
        "# Merge into slurm.conf on every host (keep the node's CPUs, RealMemory, ...).",
        "# A GRES type must be a substring of the name slurmd detects: the NVML name cut at",
        "# its first '-', then _<slices>g.<GiB>gb for a MIG instance"
        + (f" (e.g. {example[1]} for {example[0]})." if example else "."),
        "GresTypes=gpu",
        f"NodeName={node or '<node>'} Gres={','.join(gres) if gres else 'gpu:0'}",
        "# Jobs are confined to their slice only with cgroup.conf: ConstrainDevices=yes",
        "# and TaskPlugin=task/cgroup (see cgroup.conf.fragment).",
        "# To account MIG usage per type:",
        f"#AccountingStorageTRES={tres}",
    ]
    cgroup_conf = [f"# {h}" for h in header] + [
        "# Merge into cgroup.conf on every GPU node, with TaskPlugin=task/cgroup in slurm.conf:",
        "# without it a job sees every GPU and MIG instance of the node, not only its own.",
        "ConstrainDevices=yes",
    ]
    steps = [
        "#!/bin/sh",
        *[f"# {h}" for h in header],
        "# Change this node's MIG layout. Slurm does not partition GPUs itself: drain the",
        "# node, let its jobs finish, apply the layout with mig-parted, restart slurmd,",
        "# resume. Run as root on the node; slurm.conf on every host must already carry the",
        "# Gres line of slurm.conf.fragment.",
        "set -eu",
        'HERE=$(cd "$(dirname "$0")" && pwd)',
        f"NODE={node_ref}",
        f"CONFIG={mc.node_config}",
        'scontrol update NodeName="$NODE" State=DRAIN Reason="miso: MIG layout change"',
        'while [ -n "$(squeue -h -w "$NODE" -o %i)" ]; do sleep 30; done',
        'nvidia-mig-parted apply -f "$HERE/mig-parted.yaml" -c "$CONFIG"',
        'nvidia-mig-parted assert -f "$HERE/mig-parted.yaml" -c "$CONFIG"',
        "scontrol reconfigure",
        "systemctl restart slurmd",
        'scontrol update NodeName="$NODE" State=RESUME',
    ]
    files: dict[str, str] = {
        "mig-parted.yaml": mig_parted_yaml(mc, header),
        "gres.conf": "\n".join(gres_conf) + "\n",
        "slurm.conf.fragment": "\n".join(slurm_conf) + "\n",
        "cgroup.conf.fragment": "\n".join(cgroup_conf) + "\n",
        "reconfigure.sh": "\n".join(steps) + "\n",
    }
    executable = {"reconfigure.sh"}
    # The type a whole-GPU job asks for when it waits: that of the plan's whole GPUs.
    whole_types = [gpu_type(g, None) or whole_gpu_type(g.model_key) for g in handoff.gpus
                   if not g.mig_enabled]  # fmt: skip
    job_summaries = []
    used: set[str] = set()
    for job in handoff.jobs:
        gpu = next((g for g in handoff.gpus if g.index == job.gpu), None)
        if job.profile:
            if gpu is None:  # waiting: a GPU of the plan that has this slice
                gpu = next(
                    (g for g in handoff.gpus if g.layout is not None
                     and job.profile in g.layout.counts()), None,
                )  # fmt: skip
            gtype: str | None = gpu_type(gpu, job.profile) if gpu is not None else None
            gtype = gtype or job.profile
        elif gpu is not None:
            gtype = gpu_type(gpu, None) or whole_gpu_type(gpu.model_key)
        else:
            gtype = next((t for t in whole_types if t), None)
        gres_req = f"gpu:{gtype}:1" if gtype else "gpu:1"
        fname: str | None = None
        if job.spec is not None:  # the script runs the job's command: needs its queue entry
            fname = f"jobs/{_job_name(job.name, used)}.sbatch"
            files[fname] = _sbatch(job, gres_req, header)
            executable.add(fname)
        job_summaries.append(
            {
                "job": job.name,
                "gres": gres_req,
                "gpu": job.gpu,
                "waiting": job.waiting,
                "file": fname,
            }
        )
    summary = {
        "configs": mc.configs,
        "node_config": mc.node_config,
        "gres": gres,
        "types": types,
        "detected": dict(sorted(detected.items())),
        "jobs": job_summaries,
        "steps": [
            "merge slurm.conf.fragment into slurm.conf and cgroup.conf.fragment into "
            "cgroup.conf on every host",
            f"sh reconfigure.sh (on {node or 'the node'}, as root): drain, wait for its jobs, "
            f"nvidia-mig-parted apply -c {mc.node_config}, scontrol reconfigure, "
            "restart slurmd, resume",
            "sbatch jobs/<job>.sbatch",
        ],
    }
    return Bundle(files, summary, executable)


def _sbatch(job: JobHandoff, gres_req: str, header: list[str]) -> str:
    spec = job.spec
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={_sbatch_word(job.name)}",
        f"#SBATCH --gres={gres_req}",
        f"#SBATCH --output={_sbatch_word(job.name)}-%j.out",
    ]
    if spec is not None and getattr(spec, "cwd", None):
        lines.append(f"#SBATCH --chdir={_sbatch_word(str(spec.cwd))}")
    lines += [f"# {h}" for h in header]
    if job.waiting:
        lines.append("# Waiting in the plan: queued for this slice type.")
    elif job.predicted_relative_step_time is not None:
        lines.append(
            f"# Planned on GPU {job.gpu}; predicted step time "
            f"{job.predicted_relative_step_time:g}x that of the whole GPU."
        )
    argv = _argv(spec) or []
    for k, v in (getattr(spec, "env", {}) or {}).items():
        lines.append(f"export {k}={shlex.quote(str(v))}")
    lines.append("exec " + shlex.join(argv))
    return "\n".join(lines) + "\n"


def _sbatch_word(text: str) -> str:
    # #SBATCH lines are not parsed by a shell: no quoting, so keep one plain word.
    return re.sub(r"[^A-Za-z0-9._/%+-]", "_", text)


# -- mig-parted alone -------------------------------------------------------------


def mig_parted_bundle(handoff: Handoff, *, node_config: str | None) -> Bundle:
    mc = mig_configs(handoff, node_config)
    text = mig_parted_yaml(mc, _header(handoff))
    summary = {
        "configs": mc.configs,
        "node_config": mc.node_config,
        "per_gpu": {str(k): v for k, v in sorted(mc.per_gpu.items())},
        "steps": [
            f"sudo nvidia-mig-parted apply -f mig-parted.yaml -c {mc.node_config}",
            f"sudo nvidia-mig-parted assert -f mig-parted.yaml -c {mc.node_config}",
        ],
    }
    return Bundle({"mig-parted.yaml": text}, summary)


def _header(handoff: Handoff) -> list[str]:
    what = {"plan": "a plan", "queue": "a planned queue", "current": "the GPUs' current layout"}
    return [f"Written by miso {__version__} from {what.get(handoff.source, handoff.source)}."]


# -- entry point ------------------------------------------------------------------


def export(
    handoff: Handoff,
    fmt: str,
    *,
    node: str | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    job_namespace: str = "default",
    configmap: str = DEFAULT_CONFIGMAP,
    image: str | None = None,
    node_config: str | None = None,
    existing_configs: dict[str, list[dict[str, Any]]] | None = None,
    slurm_types: str = "bare",
    workdir_volume: str = "hostpath",
) -> Bundle:
    """Render ``handoff`` in ``fmt`` (one of :data:`FORMATS`)."""
    if node_config is not None:
        check_config_name(node_config)
    if workdir_volume not in WORKDIR_VOLUMES:
        raise UsageError(
            f"--workdir-volume {workdir_volume!r}: expected one of {', '.join(WORKDIR_VOLUMES)}"
        )
    resolve_waiting(handoff)
    if fmt != "mig-parted" and any(j.spec is None for j in handoff.jobs):
        handoff.warnings.append(
            "no --queue: the jobs' commands are unknown, so no "
            + ("Job manifests" if fmt == "k8s" else "sbatch scripts")
            + " were written for them; pass the queue the plan was made from"
        )
    if fmt == "mig-parted":
        bundle = mig_parted_bundle(handoff, node_config=node_config)
    elif fmt == "k8s":
        bundle = k8s_bundle(
            handoff,
            node=node,
            namespace=namespace,
            job_namespace=job_namespace,
            configmap=configmap,
            image=image,
            node_config=node_config,
            existing=existing_configs,
            workdir_volume=workdir_volume,
        )
    elif fmt == "slurm":
        bundle = slurm_bundle(handoff, node=node, node_config=node_config, types=slurm_types)
    else:
        raise UsageError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    bundle.summary = {
        "format": fmt,
        "source": handoff.source,
        "gpus": [
            {
                "index": g.index,
                "mode": g.mode,
                "model": g.model_key,
                "layout": g.layout.name if g.layout is not None else None,
            }
            for g in handoff.gpus
        ],
        **bundle.summary,
        "warnings": list(handoff.warnings),
    }
    return bundle


def write_bundle(bundle: Bundle, outdir: Path) -> list[Path]:
    """Write the files under ``outdir`` (atomically, one by one); return their paths."""
    from miso_cli.runtime.state import atomic_write_text

    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise BadInput(f"--out {outdir}: exists and is not a directory")
    paths = []
    for rel, text in sorted(bundle.files.items()):
        path = outdir / rel
        mode = 0o755 if rel in bundle.executable else 0o644
        try:
            atomic_write_text(path, text, mode=mode)
        except OSError as exc:
            raise BadInput(f"--out {outdir}: cannot write {rel}: {exc.strerror or exc}") from None
        paths.append(path)
    return paths


def stream_text(bundle: Bundle, fmt: str) -> str:
    """All files as one text for stdout: a YAML stream for k8s, headed sections otherwise."""
    if fmt == "mig-parted":
        return bundle.files["mig-parted.yaml"]
    if fmt == "k8s":
        docs = [bundle.files["mig-config.yaml"]]
        docs += [t for name, t in sorted(bundle.files.items()) if name.startswith("jobs/")]
        steps = "".join("# " + ln + "\n" for ln in bundle.summary.get("steps", []))
        return steps + "---\n".join(docs)
    parts = []
    for name in [
        "mig-parted.yaml",
        "gres.conf",
        "slurm.conf.fragment",
        "cgroup.conf.fragment",
        "reconfigure.sh",
    ] + sorted(n for n in bundle.files if n.startswith("jobs/")):
        if name in bundle.files:
            parts.append(f"# ==> {name} <==\n{bundle.files[name]}")
    return "\n".join(parts)


# -- mig-parted's own check -------------------------------------------------------


def mig_parted_config_text(bundle: Bundle) -> str | None:
    """The mig-parted config inside a bundle (the file, or the ConfigMap's config.yaml)."""
    if "mig-parted.yaml" in bundle.files:
        return bundle.files["mig-parted.yaml"]
    configs = bundle.summary.get("configs")
    if isinstance(configs, dict):
        return mig_parted_yaml(configs, [])
    return None


def run_mig_parted_check(
    config_text: str, config: str, binary: str | None = None, timeout_s: float = 60.0
) -> tuple[bool, str]:
    """``nvidia-mig-parted assert --valid-config -f FILE -c CONFIG``: (ok, its output).

    That mode parses the file with mig-parted's own schema and checks the config is
    present, without touching a GPU (cmd/nvidia-mig-parted/assert/assert.go).
    """
    import shutil
    import subprocess
    import tempfile

    exe = binary or shutil.which("nvidia-mig-parted")
    if exe is None:
        raise FileNotFoundError("nvidia-mig-parted")
    with tempfile.TemporaryDirectory(prefix="miso-mig-parted-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(config_text, encoding="utf-8")
        proc = subprocess.run(
            [exe, "assert", "--valid-config", "-f", str(path), "-c", config],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    out = " ".join((proc.stdout + " " + proc.stderr).split())
    return proc.returncode == 0, out


def validate_with_mig_parted(bundle: Bundle, binary: str | None = None) -> dict[str, Any]:
    """Check the bundle's mig-parted config with ``nvidia-mig-parted`` when it is on PATH.

    Returns ``{"tool": ..., "ok": true/false/None, "detail": ...}``; ``ok`` is None when the
    tool is not installed. A config the tool refuses is an internal error of miso's.
    """
    import shutil
    import subprocess

    exe = binary or shutil.which("nvidia-mig-parted")
    text = mig_parted_config_text(bundle)
    node_config = bundle.summary.get("node_config")
    if exe is None or text is None or not isinstance(node_config, str):
        return {"tool": "nvidia-mig-parted", "ok": None, "detail": "not on PATH"}
    try:
        ok, detail = run_mig_parted_check(text, node_config, exe)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"tool": "nvidia-mig-parted", "ok": None, "detail": f"could not run: {exc}"}
    if not ok:
        raise RuntimeError(f"nvidia-mig-parted refuses the config miso wrote: {detail}")
    return {"tool": "nvidia-mig-parted", "ok": True, "detail": detail}


def doctor_mig_parted_check(drv: Any, binary: str | None = None) -> dict[str, Any]:
    """For ``miso doctor``: export the GPUs' current layout as a mig-parted config and have
    ``nvidia-mig-parted assert --valid-config`` read it.

    Returns ``{"name": "mig-parted", "ok": True/False/None, "message": ...}``; ``ok`` is
    None when the tool is not installed (nothing to check, not a failure).
    """
    import shutil
    import subprocess

    exe = binary or shutil.which("nvidia-mig-parted")
    if exe is None:
        return {"name": "mig-parted", "ok": None, "message": "nvidia-mig-parted not on PATH"}
    bundle = mig_parted_bundle(from_driver(drv), node_config=None)
    config = bundle.summary["node_config"]
    try:
        ok, detail = run_mig_parted_check(bundle.files["mig-parted.yaml"], config, exe)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"name": "mig-parted", "ok": False, "message": f"could not run {exe}: {exc}"}
    what = "accepts" if ok else "refuses"
    return {
        "name": "mig-parted",
        "ok": ok,
        "message": f"{exe} {what} the current layout as config {config!r}: {detail}",
    }
