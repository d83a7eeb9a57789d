"""MIG GPU-instance profiles of the GPU models miso knows, as the driver reports them.

These tables drive the simulated NVML (which answers profile-info and placement
queries from them) and let the planner and simulator reason about a GPU model
without a driver. On a real GPU the same structures are built from NVML's
answers (see :mod:`miso_cli.gpu.nvml`), so nothing downstream depends on these
tables being the source.

Terms, as NVML uses them:

* profile *index*: the ``NVML_GPU_INSTANCE_PROFILE_*`` constant passed to
  ``nvmlDeviceGetGpuInstanceProfileInfo``;
* profile *id*: ``info.id`` from that call, what placement, create and list
  calls take (A100: 1g=19, 1g+me=20, 1g double memory=15, 2g=14, 3g=9, 4g=5, 7g=0);
* placement: ``(start, size)`` in memory slots (8 on A100/H100/H200, 4 on A30).
"""

from __future__ import annotations

from dataclasses import dataclass

# NVML_GPU_INSTANCE_PROFILE_* indices (nvml.h); kept here as plain ints so that this
# module, the planner and the simulator import without the binding.
IDX_1_SLICE = 0
IDX_2_SLICE = 1
IDX_3_SLICE = 2
IDX_4_SLICE = 3
IDX_7_SLICE = 4
IDX_1_SLICE_REV1 = 7  # 1g with media extensions (+me)
IDX_2_SLICE_REV1 = 8  # 2g with media extensions (A30)
IDX_1_SLICE_REV2 = 9  # 1g with double memory (e.g. 1g.10gb on A100-40GB)


@dataclass(frozen=True, order=True)
class Placement:
    """Where a GPU instance sits: first memory slot and number of slots."""

    start: int
    size: int

    @property
    def slots(self) -> range:
        return range(self.start, self.start + self.size)

    def __str__(self) -> str:
        return f"{self.start}:{self.size}"


@dataclass(frozen=True)
class SliceProfile:
    """One GPU-instance profile (e.g. ``3g.20gb``) of one GPU model."""

    name: str
    profile_id: int
    index: int
    slices: int  # compute slices (NVML sliceCount)
    memory_mb: int  # NVML memorySizeMB
    instance_count: int  # most instances of this profile at once
    multiprocessors: int
    copy_engines: int
    decoders: int
    encoders: int
    jpegs: int
    ofas: int
    placements: tuple[Placement, ...]
    variant: str = "standard"  # "standard", "me" (+media extensions), "double_memory"

    @property
    def memory_slots(self) -> int:
        return self.placements[0].size

    @property
    def compute_name(self) -> str:
        """The size class, e.g. ``3g``."""
        return f"{self.slices}g"


@dataclass(frozen=True)
class GpuModel:
    """A MIG-capable GPU model: its name, memory and instance profiles."""

    key: str  # e.g. "a100-40gb", as in --gpu sim:a100-40gb
    name: str  # as nvmlDeviceGetName reports it
    memory_mb: int  # total framebuffer, nvmlDeviceGetMemoryInfo().total / MiB
    compute_slices: int  # 7 (A100/H100/H200/B200) or 4 (A30)
    memory_slots: int  # 8 or 4
    max_mig_devices: int  # nvmlDeviceGetMaxMigDeviceCount
    multiprocessors: int  # SMs of the whole GPU
    pci_device_id: int  # as mig-parted's device-filter writes it, e.g. 0x20B010DE
    profiles: tuple[SliceProfile, ...]

    def profile(self, name_or_id: str | int) -> SliceProfile:
        for p in self.profiles:
            if p.name == name_or_id or p.profile_id == name_or_id:
                return p
        raise KeyError(name_or_id)

    def standard_profiles(self) -> tuple[SliceProfile, ...]:
        return tuple(p for p in self.profiles if p.variant == "standard")

    def by_slices(self, slices: int) -> SliceProfile:
        """The standard profile with ``slices`` compute slices (e.g. 3 -> 3g.20gb)."""
        for p in self.standard_profiles():
            if p.slices == slices:
                return p
        raise KeyError(f"{self.key} has no standard {slices}g profile")

    @property
    def full_profile(self) -> SliceProfile:
        return max(self.standard_profiles(), key=lambda p: p.slices)


def _pl(starts: tuple[int, ...], size: int) -> tuple[Placement, ...]:
    return tuple(Placement(s, size) for s in starts)


def _seven_slice_model(
    key: str,
    name: str,
    memory_mb: int,
    sizes_mb: dict[str, int],
    names: dict[str, str],
    sms: dict[str, int],
    total_sms: int,
    pci_device_id: int,
) -> GpuModel:
    """A 7-compute-slice, 8-memory-slot GPU (A100, H100, H200, B200).

    ``sizes_mb``/``names``/``sms`` are keyed by "1g", "1g+me", "1g2", "2g", "3g", "4g", "7g"
    ("1g2" = the double-memory 1g).
    """
    # (key, index, slices, instances, placements, ce, dec, enc, jpg, ofa, variant)
    spec = [
        ("1g", IDX_1_SLICE, 1, 7, _pl((0, 1, 2, 3, 4, 5, 6), 1), 1, 0, 0, 0, 0, "standard"),
        ("1g+me", IDX_1_SLICE_REV1, 1, 1, _pl((0, 1, 2, 3, 4, 5, 6), 1), 1, 1, 0, 1, 1, "me"),
        ("1g2", IDX_1_SLICE_REV2, 1, 4, _pl((0, 2, 4, 6), 2), 1, 1, 0, 0, 0, "double_memory"),
        ("2g", IDX_2_SLICE, 2, 3, _pl((0, 2, 4), 2), 2, 1, 0, 0, 0, "standard"),
        ("3g", IDX_3_SLICE, 3, 2, _pl((0, 4), 4), 3, 2, 0, 0, 0, "standard"),
        ("4g", IDX_4_SLICE, 4, 1, _pl((0,), 4), 4, 2, 0, 0, 0, "standard"),
        ("7g", IDX_7_SLICE, 7, 1, _pl((0,), 8), 7, 5, 0, 1, 1, "standard"),
    ]
    ids = {"1g": 19, "1g+me": 20, "1g2": 15, "2g": 14, "3g": 9, "4g": 5, "7g": 0}
    profiles = tuple(
        SliceProfile(
            name=names[k],
            profile_id=ids[k],
            index=idx,
            slices=slices,
            memory_mb=sizes_mb[k],
            instance_count=count,
            multiprocessors=sms[k],
            copy_engines=ce,
            decoders=dec,
            encoders=enc,
            jpegs=jpg,
            ofas=ofa,
            placements=pl,
            variant=variant,
        )
        for (k, idx, slices, count, pl, ce, dec, enc, jpg, ofa, variant) in spec
    )
    return GpuModel(
        key=key,
        name=name,
        memory_mb=memory_mb,
        compute_slices=7,
        memory_slots=8,
        max_mig_devices=7,
        multiprocessors=total_sms,
        pci_device_id=pci_device_id,
        profiles=profiles,
    )


def _names(g1: str, g1d: str, g2: str, g3: str, g4: str, g7: str) -> dict[str, str]:
    return {"1g": g1, "1g+me": g1 + "+me", "1g2": g1d, "2g": g2, "3g": g3, "4g": g4, "7g": g7}


_A100_SMS = {"1g": 14, "1g+me": 14, "1g2": 14, "2g": 28, "3g": 42, "4g": 56, "7g": 98}
_H100_SMS = {"1g": 16, "1g+me": 16, "1g2": 26, "2g": 32, "3g": 60, "4g": 64, "7g": 132}

A100_40GB = _seven_slice_model(
    "a100-40gb",
    "NVIDIA A100-SXM4-40GB",
    40960,
    {"1g": 4864, "1g+me": 4864, "1g2": 9856, "2g": 9856, "3g": 19968, "4g": 19968, "7g": 40192},
    _names("1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"),
    _A100_SMS,
    108,
    0x20B010DE,
)

MODELS: dict[str, GpuModel] = {m.key: m for m in (A100_40GB,)}


def model(key: str) -> GpuModel:
    try:
        return MODELS[key.lower()]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise KeyError(f"unknown GPU model {key!r} (known: {known})") from None
