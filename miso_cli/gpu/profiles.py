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
IDX_1_SLICE_GFX = 0xA  # graphics-capable (RTX PRO Blackwell)
IDX_2_SLICE_GFX = 0xB
IDX_4_SLICE_GFX = 0xC
IDX_1_SLICE_NO_ME = 0xD  # without media engines
IDX_2_SLICE_NO_ME = 0xE
IDX_1_SLICE_ALL_ME = 0xF  # with all media engines
IDX_2_SLICE_ALL_ME = 0x10
IDX_3_SLICE_GFX = 0x11
PROFILE_INDEX_COUNT = 0x12  # NVML_GPU_INSTANCE_PROFILE_COUNT in nvml.h since R575

# Variant per profile index, as miso names them.
VARIANT_OF_INDEX = {
    IDX_1_SLICE_REV1: "me",
    IDX_2_SLICE_REV1: "me",
    IDX_1_SLICE_REV2: "double_memory",
    IDX_1_SLICE_GFX: "gfx",
    IDX_2_SLICE_GFX: "gfx",
    IDX_4_SLICE_GFX: "gfx",
    IDX_3_SLICE_GFX: "gfx",
    IDX_1_SLICE_NO_ME: "no_me",
    IDX_2_SLICE_NO_ME: "no_me",
    IDX_1_SLICE_ALL_ME: "me_all",
    IDX_2_SLICE_ALL_ME: "me_all",
}


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
    # "standard", "me" (+me), "double_memory", "gfx" (+gfx), "me_all" (+me.all), "no_me" (-me)
    variant: str = "standard"

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
    # "ampere", "hopper" or "blackwell": Ampere needs a GPU reset to switch MIG mode.
    architecture: str = "ampere"

    # issue 12 (simulator speed): the dataclass's hash, computed once. Planners key caches
    # by model, and hashing a model hashes every profile and placement it has. Not pickled:
    # a string's hash differs from one process to the next.
    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(tuple(getattr(self, f) for f in self.__dataclass_fields__))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    @property
    def mig_mode_needs_reset(self) -> bool:
        """Whether switching MIG mode waits for a GPU reset (A100, A30), or not (Hopper+).

        NVIDIA's MIG user guide: "Setting MIG mode on the A100/A30 requires a GPU
        reset"; on H100 and later the driver switches the mode itself.
        """
        return self.architecture == "ampere"

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


# Per size class of a 7-compute-slice GPU: (key, index, id, slices, instances, placements,
# variant). Ids and placements are the same on every such GPU (A100, H100, H200):
# nvidia-smi mig -lgip / -lgipp list 1g=19, 1g+me=20, 1g double memory=15, 2g=14, 3g=9,
# 4g=5, 7g=0 with placements {0..6}:1, {0,2,4,6}:2, {0,2,4}:2, {0,4}:4, {0}:4, {0}:8.
_SEVEN = (
    ("1g", IDX_1_SLICE, 19, 1, 7, _pl((0, 1, 2, 3, 4, 5, 6), 1), "standard"),
    ("1g+me", IDX_1_SLICE_REV1, 20, 1, 1, _pl((0, 1, 2, 3, 4, 5, 6), 1), "me"),
    ("1g2", IDX_1_SLICE_REV2, 15, 1, 4, _pl((0, 2, 4, 6), 2), "double_memory"),
    ("2g", IDX_2_SLICE, 14, 2, 3, _pl((0, 2, 4), 2), "standard"),
    ("3g", IDX_3_SLICE, 9, 3, 2, _pl((0, 4), 4), "standard"),
    ("4g", IDX_4_SLICE, 5, 4, 1, _pl((0,), 4), "standard"),
    ("7g", IDX_7_SLICE, 0, 7, 1, _pl((0,), 8), "standard"),
)

# A30 (4 compute slices x 4 memory slots), from nvidia-smi mig -lgip / -lgipp on an A30:
# 1g.6gb=14 {0,1,2,3}:1, 1g.6gb+me=21 {0,1,2,3}:1, 2g.12gb=5 {0,2}:2, 2g.12gb+me=6
# {0,2}:2, 4g.24gb=0 {0}:4.
_FOUR = (
    ("1g", IDX_1_SLICE, 14, 1, 4, _pl((0, 1, 2, 3), 1), "standard"),
    ("1g+me", IDX_1_SLICE_REV1, 21, 1, 1, _pl((0, 1, 2, 3), 1), "me"),
    ("2g", IDX_2_SLICE, 5, 2, 2, _pl((0, 2), 2), "standard"),
    ("2g+me", IDX_2_SLICE_REV1, 6, 2, 1, _pl((0, 2), 2), "me"),
    ("4g", IDX_4_SLICE, 0, 4, 1, _pl((0,), 4), "standard"),
)

# Engines per size class: (multiprocessors, copy engines, decoders, encoders, jpegs, ofas).
_Engines = dict[str, tuple[int, int, int, int, int, int]]


def _build(
    key: str,
    name: str,
    memory_mb: int,
    spec: tuple[tuple[str, int, int, int, int, tuple[Placement, ...], str], ...],
    names: dict[str, str],
    sizes_mb: dict[str, int],
    engines: _Engines,
    total_sms: int,
    pci_device_id: int,
    architecture: str = "ampere",
) -> GpuModel:
    """A GPU model from its size-class table and the per-class figures ``nvidia-smi`` lists."""
    profiles = tuple(
        SliceProfile(
            name=names[k],
            profile_id=pid,
            index=idx,
            slices=slices,
            memory_mb=sizes_mb[k],
            instance_count=count,
            multiprocessors=engines[k][0],
            copy_engines=engines[k][1],
            decoders=engines[k][2],
            encoders=engines[k][3],
            jpegs=engines[k][4],
            ofas=engines[k][5],
            placements=pl,
            variant=variant,
        )
        for (k, idx, pid, slices, count, pl, variant) in spec
    )
    compute = max(p.slices for p in profiles)
    slots = max(pl.start + pl.size for p in profiles for pl in p.placements)
    return GpuModel(
        key=key,
        name=name,
        memory_mb=memory_mb,
        compute_slices=compute,
        memory_slots=slots,
        max_mig_devices=compute,
        multiprocessors=total_sms,
        pci_device_id=pci_device_id,
        profiles=profiles,
        architecture=architecture,
    )


def _names(g1: str, g1d: str, g2: str, g3: str, g4: str, g7: str) -> dict[str, str]:
    return {"1g": g1, "1g+me": g1 + "+me", "1g2": g1d, "2g": g2, "3g": g3, "4g": g4, "7g": g7}


def _sizes(g1: int, g1d: int, g3: int, g7: int) -> dict[str, int]:
    # 1g+me has the 1g's memory, 2g the double-memory 1g's, 4g the 3g's.
    return {"1g": g1, "1g+me": g1, "1g2": g1d, "2g": g1d, "3g": g3, "4g": g3, "7g": g7}


# (SM, CE, DEC, ENC, JPEG, OFA) per size class, as nvidia-smi mig -lgip prints them.
_A100_ENGINES: _Engines = {
    "1g": (14, 1, 0, 0, 0, 0),
    "1g+me": (14, 1, 1, 0, 1, 1),
    "1g2": (14, 1, 1, 0, 0, 0),
    "2g": (28, 2, 1, 0, 0, 0),
    "3g": (42, 3, 2, 0, 0, 0),
    "4g": (56, 4, 2, 0, 0, 0),
    "7g": (98, 7, 5, 0, 1, 1),
}
_HOPPER_ENGINES: _Engines = {
    "1g": (16, 1, 1, 0, 1, 0),
    "1g+me": (16, 1, 1, 0, 1, 1),
    "1g2": (26, 1, 1, 0, 1, 0),
    "2g": (32, 2, 2, 0, 2, 0),
    "3g": (60, 3, 3, 0, 3, 0),
    "4g": (64, 4, 4, 0, 4, 0),
    "7g": (132, 8, 7, 0, 7, 1),
}
_A30_ENGINES: _Engines = {
    "1g": (14, 1, 1, 0, 0, 0),
    "1g+me": (14, 1, 1, 0, 1, 1),
    "2g": (28, 2, 2, 0, 0, 0),
    "2g+me": (28, 2, 2, 0, 1, 1),
    "4g": (56, 4, 4, 0, 1, 1),
}

# Memory sizes are NVML memorySizeMB (MiB); nvidia-smi prints them in GiB with two
# decimals (4864 MiB = 4.75 GiB). They differ slightly between driver releases (an
# A100-40GB 2g.10gb is 9.75 GiB on R470, 9.62 GiB on R535+); these are recent drivers'.
A100_40GB = _build(
    "a100-40gb",
    "NVIDIA A100-SXM4-40GB",
    40960,
    _SEVEN,
    _names("1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"),
    _sizes(4864, 9856, 19968, 40192),
    _A100_ENGINES,
    108,
    0x20B010DE,
)

A100_80GB = _build(
    "a100-80gb",
    "NVIDIA A100-SXM4-80GB",
    81920,
    _SEVEN,
    _names("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
    _sizes(9728, 19968, 40192, 80640),
    _A100_ENGINES,
    108,
    0x20B210DE,
)

A30_24GB = _build(
    "a30-24gb",
    "NVIDIA A30",
    24576,
    _FOUR,
    {"1g": "1g.6gb", "1g+me": "1g.6gb+me", "2g": "2g.12gb", "2g+me": "2g.12gb+me", "4g": "4g.24gb"},
    {"1g": 5952, "1g+me": 5952, "2g": 11968, "2g+me": 11968, "4g": 24000},
    _A30_ENGINES,
    56,
    0x20B710DE,
)

H100_80GB = _build(
    "h100-80gb",
    "NVIDIA H100 80GB HBM3",
    81559,
    _SEVEN,
    _names("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
    _sizes(9984, 20096, 40448, 81152),
    _HOPPER_ENGINES,
    132,
    0x233010DE,
    "hopper",
)

H100_94GB = _build(
    "h100-94gb",
    "NVIDIA H100 NVL",
    95830,
    _SEVEN,
    _names("1g.12gb", "1g.24gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb"),
    _sizes(11008, 22144, 47488, 95360),
    _HOPPER_ENGINES,
    132,
    0x232110DE,
    "hopper",
)

H200_141GB = _build(
    "h200-141gb",
    "NVIDIA H200",
    143771,
    _SEVEN,
    _names("1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"),
    # As a real H200 (SXM) on driver 580.159.04 reports them (tests/data/real/h200-141gb.json;
    # docs/hardware.md); an earlier public capture gave 33024/71168 and 7g 143104.
    _sizes(16384, 33280, 71424, 143360),
    _HOPPER_ENGINES,
    132,
    0x233510DE,
    "hopper",
)

# B200 (unverified where marked in docs/gpu.md): ids, instance counts, the 1g/1g+me/1g.45gb/
# 2g SM and engine counts and their memory are from public `nvidia-smi mig -lgip` captures
# (NVIDIA/mig-parted PRs 166 and 187, NVIDIA/gpu-operator PRs 1242 and 1351); placements
# follow the 7-compute x 8-memory-slot pattern every such GPU shares. The 3g/4g/7g memory,
# SM and engine figures and the total memory are estimates awaiting a capture.
_B200_ENGINES: _Engines = {
    "1g": (18, 2, 1, 0, 1, 0),
    "1g+me": (18, 2, 1, 0, 1, 1),
    "1g2": (30, 2, 1, 0, 1, 0),
    "2g": (36, 4, 2, 0, 2, 0),
    "3g": (72, 6, 3, 0, 3, 0),  # unverified
    "4g": (76, 8, 4, 0, 4, 0),  # unverified
    "7g": (148, 16, 7, 0, 7, 1),  # unverified
}

B200 = _build(
    "b200",
    "NVIDIA B200",
    183359,  # unverified
    _SEVEN,
    _names("1g.23gb", "1g.45gb", "2g.45gb", "3g.90gb", "4g.90gb", "7g.180gb"),
    # 1g: 22.00 GiB on the R570 capture of PR 166 (20.50 on PR 187's); 1g.45gb/2g: 44.25 GiB.
    _sizes(22528, 45312, 90112, 182528),
    _B200_ENGINES,
    148,
    0x290110DE,
    "blackwell",
)

# RTX PRO 6000 Blackwell Server Edition: 4 compute slices on a 12-unit placement grid.
# Ids 14 (1g), 21 (1g+me), 47 (1g+gfx), 65 (1g+me.all), the 1g memory (23.62 GiB) and
# engines are from public `nvidia-smi mig -lgip` captures (GoogleCloudPlatform/
# container-engine-accelerators PR 564, bigstack-oss/cubecos issue 312); 2g.48gb = 5 and
# 4g.96gb = 0 follow the 4-slice numbering the A30 shares, and the placements
# {0,3,6,9}:3, {0,6}:6, {0}:12 are as the issue records them. Ids of the -me and 2g/4g
# +gfx/+me.all variants, 2g/4g memory and SMs are unverified (see docs/gpu.md).
_RTX_PL_1 = _pl((0, 3, 6, 9), 3)
_RTX_PL_2 = _pl((0, 6), 6)
_RTX_PL_4 = _pl((0,), 12)
_RTX = (
    ("1g", IDX_1_SLICE, 14, 1, 4, _RTX_PL_1, "standard"),
    ("1g+me", IDX_1_SLICE_REV1, 21, 1, 1, _RTX_PL_1, "me"),
    ("1g+gfx", IDX_1_SLICE_GFX, 47, 1, 4, _RTX_PL_1, "gfx"),
    ("1g+me.all", IDX_1_SLICE_ALL_ME, 65, 1, 1, _RTX_PL_1, "me_all"),
    ("1g-me", IDX_1_SLICE_NO_ME, 66, 1, 4, _RTX_PL_1, "no_me"),  # id unverified
    ("2g", IDX_2_SLICE, 5, 2, 2, _RTX_PL_2, "standard"),
    ("2g+gfx", IDX_2_SLICE_GFX, 48, 2, 2, _RTX_PL_2, "gfx"),  # id unverified
    ("2g+me.all", IDX_2_SLICE_ALL_ME, 67, 2, 1, _RTX_PL_2, "me_all"),  # id unverified
    ("2g-me", IDX_2_SLICE_NO_ME, 68, 2, 2, _RTX_PL_2, "no_me"),  # id unverified
    ("4g", IDX_4_SLICE, 0, 4, 1, _RTX_PL_4, "standard"),
    ("4g+gfx", IDX_4_SLICE_GFX, 49, 4, 1, _RTX_PL_4, "gfx"),  # id unverified
)
_RTX_ENGINES: _Engines = {
    "1g": (46, 1, 1, 1, 1, 0),
    "1g+me": (46, 1, 1, 1, 1, 1),
    "1g+gfx": (46, 1, 1, 1, 1, 0),
    "1g+me.all": (46, 1, 4, 4, 4, 1),  # ENC/JPEG unverified
    "1g-me": (46, 1, 0, 0, 0, 0),
    "2g": (94, 2, 2, 2, 2, 0),  # unverified
    "2g+gfx": (94, 2, 2, 2, 2, 0),
    "2g+me.all": (94, 2, 4, 4, 4, 1),
    "2g-me": (94, 2, 0, 0, 0, 0),
    "4g": (188, 4, 4, 4, 4, 1),
    "4g+gfx": (188, 4, 4, 4, 4, 1),
}
_RTX_MB = {"1g": 24192, "2g": 48640, "4g": 97280}  # 1g from the capture; 2g/4g unverified

RTX_PRO_6000 = _build(
    "rtx-pro-6000",
    "NVIDIA RTX PRO 6000 Blackwell Server Edition",
    97887,  # unverified
    _RTX,
    {
        k: {"1g": "1g.24gb", "2g": "2g.48gb", "4g": "4g.96gb"}[k[:2]] + k[2:]
        for k in (r[0] for r in _RTX)
    },
    {k: _RTX_MB[k[:2]] for k in (r[0] for r in _RTX)},
    _RTX_ENGINES,
    188,
    0x2BB510DE,
    "blackwell",
)

MODELS: dict[str, GpuModel] = {
    m.key: m
    for m in (
        A100_40GB,
        A100_80GB,
        A30_24GB,
        H100_80GB,
        H100_94GB,
        H200_141GB,
        B200,
        RTX_PRO_6000,
    )
}

# PCI device ids (nvmlDeviceGetPciInfo().pciDeviceId, as mig-parted's device-filter writes
# them) -> (what the GPU is, the key of the table it shares or None). The grouping is that of
# the GPU Operator's default mig-parted config (NVIDIA/gpu-operator,
# assets/state-mig-manager/0400_configmap.yaml): GPUs one device-filter lists together get
# the same MIG profiles. Which id is which product within a group is from the PCI ID
# database, not checked on hardware. Placements are a property of the chip, so a PCIe or
# A800/H800 variant shares its SXM sibling's table; its names, memory and SMs come from its
# driver. None: a MIG GPU miso has no table for (GH200, H20, H100-96GB, GB200, B300,
# GB300); miso works from the driver's answers there.
PCI_DEVICE_IDS: dict[int, tuple[str, str | None]] = {
    0x20B010DE: ("A100-SXM4-40GB", "a100-40gb"),
    0x20B110DE: ("A100-PCIE-40GB", "a100-40gb"),
    0x20F110DE: ("A100-PCIE-40GB", "a100-40gb"),
    0x20F610DE: ("A800-40GB", "a100-40gb"),
    0x20B210DE: ("A100-SXM4-80GB", "a100-80gb"),
    0x20B510DE: ("A100 80GB PCIe", "a100-80gb"),
    0x20F310DE: ("A800-SXM4-80GB", "a100-80gb"),
    0x20F510DE: ("A800 80GB PCIe", "a100-80gb"),
    0x20B710DE: ("A30", "a30-24gb"),
    0x233010DE: ("H100 80GB HBM3", "h100-80gb"),
    0x233110DE: ("H100 PCIe", "h100-80gb"),
    0x232210DE: ("H800 PCIe", "h100-80gb"),
    0x232410DE: ("H800", "h100-80gb"),
    0x232110DE: ("H100 NVL", "h100-94gb"),
    0x233A10DE: ("H800 NVL", "h100-94gb"),
    0x233510DE: ("H200", "h200-141gb"),
    0x233B10DE: ("H200 NVL", "h200-141gb"),
    0x290110DE: ("B200", "b200"),
    0x2BB510DE: ("RTX PRO 6000 Blackwell Server Edition", "rtx-pro-6000"),
    0x234210DE: ("GH200", None),
    0x233D10DE: ("H100-96GB", None),
    0x232910DE: ("H20", None),
    0x20B610DE: ("PG506-96GB", None),
    0x234810DE: ("GH200 144G HBM3e", None),
    0x294110DE: ("GB200", None),
    0x318210DE: ("B300", None),
    0x31C210DE: ("GB300", None),
}

# NVML names (without the "NVIDIA " prefix that R470+ drivers add) -> table key, for GPUs
# whose PCI id is not available (a container without PCI info).
_NAME_ALIASES = {
    "a100-pcie-40gb": "a100-40gb",
    "a100 80gb pcie": "a100-80gb",
    "a100-pcie-80gb": "a100-80gb",
    "a800-sxm4-80gb": "a100-80gb",
    "a800 80gb pcie": "a100-80gb",
    "h100 pcie": "h100-80gb",
    "h100 80gb hbm3": "h100-80gb",
    "h800": "h100-80gb",
    "h800 pcie": "h100-80gb",
    "h800 nvl": "h100-94gb",
    "h200 nvl": "h200-141gb",
}


def model(key: str) -> GpuModel:
    try:
        return MODELS[key.lower()]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise KeyError(f"unknown GPU model {key!r} (known: {known})") from None


def _bare(name: str) -> str:
    lowered = " ".join(name.lower().split())
    return lowered.removeprefix("nvidia ").strip()


def model_key_for(
    name: str | None,
    profiles: tuple[SliceProfile, ...] = (),
    pci_device_id: int | None = None,
) -> str | None:
    """The key of the table a GPU shares, from its PCI device id, else its NVML name.

    The PCI id decides when known (a name may lack the "NVIDIA " prefix, as before
    R470, or name a PCIe/A800/H800 variant). Profiles break ties between names.
    Returns ``None`` for a GPU miso has no table for; such a GPU still works, from
    the profiles its driver reports.
    """
    if pci_device_id is not None and pci_device_id in PCI_DEVICE_IDS:
        return PCI_DEVICE_IDS[pci_device_id][1]
    if not name:
        return None
    bare = _bare(name)
    names = {p.name for p in profiles}
    candidates = [m for m in MODELS.values() if _bare(m.name) == bare]
    if not candidates and bare in _NAME_ALIASES:
        candidates = [MODELS[_NAME_ALIASES[bare]]]
    if not candidates:
        for m in MODELS.values():
            if names and names == {p.name for p in m.profiles}:
                candidates.append(m)
    return candidates[0].key if len(candidates) == 1 else None
