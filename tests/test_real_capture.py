"""Hold miso's simulated profile tables against raw captures from real drivers.

``tests/data/real/*.json`` holds what a real driver answered (one file per
machine, written by ``Driver.capture()`` or an equivalent script):

    {"driver": str, "nvml_version": str,
     "gpus": [{"name": str, "pci_device_id": "0x2335", "memory_total_mib": int,
               "mig_mode": [current, pending],
               "gi_profiles": [{"profile": int (NVML_GPU_INSTANCE_PROFILE_* index),
                                "id": int, "name": str|null, "slice_count": int,
                                "instance_count": int, "memory_mib": int,
                                "multiprocessor_count": int, "copy_engine_count": int,
                                "decoder_count": int, "encoder_count": int,
                                "jpeg_count": int, "ofa_count": int,
                                "placements": [{"start": int, "size": int}] | null,
                                "error": str|null}]}]}

For each GPU whose model miso has a table for (by PCI device id, else name),
the ids, slice and instance counts and placements must match exactly, SM and
engine counts too (for the model's own PCI id), and the memory sizes within a
tolerance (they drift by a few hundred MiB between driver releases). Without
captures the real-data test skips; the checker itself is tested on synthetic
captures made from the simulated GPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from miso_cli.gpu import nvml as nvml_mod
from miso_cli.gpu.nvml import Driver
from miso_cli.gpu.profiles import MODELS, model_key_for
from miso_cli.gpu.sim.simnvml import SimNvml, new_state

REAL = Path(__file__).parent / "data" / "real"
CAPTURES = sorted(REAL.glob("*.json")) if REAL.is_dir() else []
MEMORY_TOLERANCE = 0.01  # 1%: H200 7g.141gb was 140.00 GiB on one release, 139.75 on another
ABSENT = ("NOT_SUPPORTED", "INVALID_ARGUMENT")  # the driver has no profile at that index


def _pci(value: Any) -> int | None:
    """ "0x2335" (device id) or "0x233510DE" (device and vendor, as mig-parted writes it)."""
    if value is None:
        return None
    n = int(str(value), 16) if isinstance(value, str) else int(value)
    return n if n > 0xFFFF else (n << 16) | 0x10DE


def compare_capture(doc: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(problems, GPUs checked): how the simulated tables differ from a capture."""
    problems: list[str] = []
    checked: list[str] = []
    for n, gpu in enumerate(doc.get("gpus", [])):
        key = model_key_for(gpu.get("name"), pci_device_id=_pci(gpu.get("pci_device_id")))
        where = f"gpus[{n}] ({gpu.get('name')}, {gpu.get('pci_device_id')})"
        if key is None:
            continue  # a GPU miso has no table for: nothing to hold against
        table = MODELS[key]
        # A sibling (PCIe, NVL, A800/H800) shares the table's ids and placements, not its
        # memory sizes: those are held only against the model's own PCI id.
        memory = _pci(gpu.get("pci_device_id")) in (None, table.pci_device_id)
        checked.append(key)
        total = gpu.get("memory_total_mib")
        if memory and total is not None and abs(total - table.memory_mb) > MEMORY_TOLERANCE * total:
            problems.append(f"{where}: memory {total} MiB, table {table.memory_mb}")
        by_index = {p.index: p for p in table.profiles}
        seen: set[int] = set()
        for row in gpu.get("gi_profiles", []):
            index = int(row["profile"])
            err = row.get("error")
            if row.get("id") is None:
                if err in ABSENT and index in by_index:
                    problems.append(
                        f"{where}: index {index}: driver has none ({err}), "
                        f"table has {by_index[index].name}"
                    )
                elif err in ABSENT:
                    seen.add(index)
                continue
            seen.add(index)
            p = by_index.get(index)
            label = f"{where}: index {index} ({row.get('name')})"
            if p is None:
                problems.append(f"{label}: id {row['id']} missing from the table")
                continue
            for field, want in (
                ("id", p.profile_id),
                ("slice_count", p.slices),
                ("instance_count", p.instance_count),
            ):
                if int(row[field]) != want:
                    problems.append(f"{label}: {field} {row[field]}, table {want} ({p.name})")
            for field, want in (
                ("multiprocessor_count", p.multiprocessors),
                ("copy_engine_count", p.copy_engines),
                ("decoder_count", p.decoders),
                ("encoder_count", p.encoders),
                ("jpeg_count", p.jpegs),
                ("ofa_count", p.ofas),
            ):
                if memory and row.get(field) is not None and int(row[field]) != want:
                    problems.append(f"{label}: {field} {row[field]}, table {want} ({p.name})")
            mem = int(row["memory_mib"])
            if memory and abs(mem - p.memory_mb) > MEMORY_TOLERANCE * mem:
                problems.append(f"{label}: memory {mem} MiB, table {p.memory_mb} ({p.name})")
            if row.get("placements") is not None:
                got = sorted((int(x["start"]), int(x["size"])) for x in row["placements"])
                want_pl = sorted((pl.start, pl.size) for pl in p.placements)
                if got != want_pl:
                    problems.append(f"{label}: placements {got}, table {want_pl} ({p.name})")
        for index, p in by_index.items():
            if index not in seen and not any(
                int(r["profile"]) == index for r in gpu.get("gi_profiles", [])
            ):
                problems.append(f"{where}: the table's {p.name} (index {index}) was not captured")
    return problems, checked


def _sim_capture(key: str, mig: bool = False) -> dict[str, Any]:
    state = new_state(key)
    state["gpus"][0]["mig_current"] = state["gpus"][0]["mig_pending"] = mig
    return Driver(SimNvml(nvml_mod.pynvml, state=state), simulated=True).capture()


@pytest.mark.parametrize("path", CAPTURES, ids=[p.name for p in CAPTURES])
def test_simulated_tables_match_real_capture(path: Path) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    problems, checked = compare_capture(doc)
    if not checked:
        pytest.skip(f"{path.name}: no GPU of a tabulated model")
    assert not problems, "\n".join([f"{path.name} (driver {doc.get('driver')}):", *problems])


def test_no_real_capture_is_a_skip_not_a_pass() -> None:
    if not CAPTURES:
        pytest.skip(f"no capture in {REAL}: the simulated tables are unchecked against hardware")
    assert all(p.suffix == ".json" for p in CAPTURES)


@pytest.mark.parametrize("key", ["h200-141gb", "a100-40gb", "b200", "rtx-pro-6000"])
def test_checker_accepts_the_simulated_gpus_own_capture(key: str) -> None:
    doc = _sim_capture(key)
    assert doc["gpus"][0]["pci_device_id"] == f"0x{MODELS[key].pci_device_id >> 16:04X}"
    problems, checked = compare_capture(json.loads(json.dumps(doc)))
    assert (problems, checked) == ([], [key])


def test_checker_finds_what_differs() -> None:
    doc = _sim_capture("h200-141gb")
    rows = {r["profile"]: r for r in doc["gpus"][0]["gi_profiles"]}
    rows[2]["placements"] = [{"start": 0, "size": 4}]  # 3g: one placement lost
    rows[4]["memory_mib"] += 256  # 7g: 140.25 vs 140.00 GiB is within tolerance
    rows[0]["id"] = 21  # 1g: another id
    rows[9]["memory_mib"] = 40000  # 1g double memory: far off
    rows[1]["multiprocessor_count"] = 34  # 2g: other SM count
    problems, _ = compare_capture(doc)
    text = "\n".join(problems)
    assert len(problems) == 4, text
    assert "multiprocessor_count 34" in text
    assert "index 2" in text and "placements" in text
    assert "index 0" in text and "id 21" in text
    assert "index 9" in text and "memory 40000" in text
    del doc["gpus"][0]["gi_profiles"][0]
    assert any("not captured" in p for p in compare_capture(doc)[0])


def test_checker_takes_refused_placements_and_absent_profiles() -> None:
    doc = _sim_capture("a100-40gb")
    for row in doc["gpus"][0]["gi_profiles"]:
        if row.get("id") is not None:
            row["placements"], row["error"] = None, "NO_PERMISSION"  # read without root
    assert compare_capture(doc) == ([], ["a100-40gb"])
    rows = doc["gpus"][0]["gi_profiles"]
    rows[0] = {"profile": 0, "error": "NOT_SUPPORTED"}  # the driver lacks the table's 1g
    problems, _ = compare_capture(doc)
    assert problems and "driver has none" in problems[0]
    other = {
        "driver": "x",
        "nvml_version": "y",
        "gpus": [dict(doc["gpus"][0], name="NVIDIA H20", pci_device_id="0x2329")],
    }
    assert compare_capture(other) == ([], [])  # no table for an H20: nothing to check


def test_a_sibling_shares_ids_and_placements_not_memory() -> None:
    doc = _sim_capture("h200-141gb")
    gpu = doc["gpus"][0]
    gpu["pci_device_id"], gpu["name"] = "0x233B", "NVIDIA H200 NVL"
    gpu["memory_total_mib"] = 143771 - 4096
    for row in gpu["gi_profiles"]:
        if row.get("memory_mib"):
            row["memory_mib"] -= 1024
    assert compare_capture(doc) == ([], ["h200-141gb"])
    gpu["gi_profiles"][0]["placements"] = []
    assert len(compare_capture(doc)[0]) == 1
