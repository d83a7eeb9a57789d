"""Layout enumeration against an independent brute force, on every GPU model."""

from __future__ import annotations

import itertools

import pytest

from miso_cli.gpu.layouts import Layout, LayoutError, Slice, enumerate_layouts, place
from miso_cli.gpu.profiles import MODELS, model


def _valid(gm, chosen) -> bool:
    """An independent checker: no shared memory slot, compute and instance limits held."""
    slots: list[int] = []
    per_profile: dict[int, int] = {}
    for prof, pl in chosen:
        slots.extend(range(pl.start, pl.start + pl.size))
        per_profile[prof.profile_id] = per_profile.get(prof.profile_id, 0) + 1
    if len(slots) != len(set(slots)) or max(slots, default=0) >= gm.memory_slots:
        return False
    if sum(prof.slices for prof, _ in chosen) > gm.compute_slices:
        return False
    return all(n <= gm.profile(pid).instance_count for pid, n in per_profile.items())


def _brute(gm, profiles, maximal: bool) -> set[Layout]:
    cands = [(p, pl) for p in profiles for pl in p.placements]
    most = gm.compute_slices  # no layout has more instances than compute slices
    valid = []
    for k in range(most + 1):
        for combo in itertools.combinations(range(len(cands)), k):
            chosen = [cands[c] for c in combo]
            if _valid(gm, chosen):
                valid.append(set(combo))
    if maximal:
        valid = [
            v
            for v in valid
            if not any(
                _valid(gm, [cands[c] for c in v] + [cands[x]])
                for x in range(len(cands))
                if x not in v
            )
        ]
    return {
        Layout.of(
            Slice(cands[c][1].start, cands[c][1].size, cands[c][0].name, cands[c][0].slices)
            for c in v
        )
        for v in valid
    }


@pytest.mark.parametrize("key", sorted(MODELS))
@pytest.mark.parametrize("maximal", [True, False])
def test_standard_profiles_match_brute_force(key: str, maximal: bool) -> None:
    gm = model(key)
    got = enumerate_layouts(gm, maximal=maximal)
    assert len(got) == len(set(got))
    assert set(got) == _brute(gm, gm.standard_profiles(), maximal)


@pytest.mark.parametrize("key", ["a100-40gb", "h100-80gb", "a30-24gb"])
def test_variant_profiles_match_brute_force(key: str) -> None:
    gm = model(key)
    me = [p for p in gm.profiles if p.variant in ("standard", "me")]
    assert set(enumerate_layouts(gm, include_me=True)) == _brute(gm, me, True)
    dm = [p for p in gm.profiles if p.variant in ("standard", "double_memory")]
    if len(dm) > len(gm.standard_profiles()):
        got = set(enumerate_layouts(gm, include_double_memory=True))
        assert got == _brute(gm, dm, True)


def test_a100_has_19_maximal_layouts_including_4g_3g() -> None:
    layouts = enumerate_layouts(model("a100-40gb"))
    assert len(layouts) == 19
    names = {lay.name for lay in layouts}
    assert "4g.20gb+3g.20gb" in names
    assert "7g.40gb" in names and "3g.20gb+3g.20gb" in names
    four_three = next(lay for lay in layouts if lay.name == "4g.20gb+3g.20gb")
    assert [(s.profile, s.start, s.size) for s in four_three.slices] == [
        ("4g.20gb", 0, 4),
        ("3g.20gb", 4, 4),
    ]


def test_a30_layouts() -> None:
    names = sorted(lay.name for lay in enumerate_layouts(model("a30-24gb")))
    assert names == sorted(
        [
            "4g.24gb",
            "2g.12gb+2g.12gb",
            "2g.12gb+1g.6gb+1g.6gb",
            "2g.12gb+1g.6gb+1g.6gb",
            "1g.6gb+1g.6gb+1g.6gb+1g.6gb",
        ]
    )


def test_profile_tables_are_consistent() -> None:
    for gm in MODELS.values():
        ids = [p.profile_id for p in gm.profiles]
        assert len(ids) == len(set(ids)), gm.key
        assert gm.full_profile.slices == gm.compute_slices
        assert gm.full_profile.memory_mb <= gm.memory_mb
        for p in gm.profiles:
            assert p.placements and all(pl.size == p.memory_slots for pl in p.placements)
            assert all(pl.start + pl.size <= gm.memory_slots for pl in p.placements)
            assert p.memory_mb * (gm.memory_slots // p.memory_slots) <= gm.memory_mb


def test_place_keeps_current_and_pins() -> None:
    gm = model("a100-40gb")
    cur = place(gm, ["3g.20gb@4", "2g.10gb", "1g.5gb"])
    assert {s.key for s in cur.slices} >= {"3g.20gb@4"}
    again = place(gm, ["3g.20gb", "2g.10gb", "2g.10gb"], prefer=cur)
    assert Slice(4, 4, "3g.20gb", 3) in again.slices
    with pytest.raises(LayoutError):
        place(gm, ["4g.20gb", "4g.20gb"])
    with pytest.raises(LayoutError):
        place(gm, ["3g.20gb@2"])
    with pytest.raises(LayoutError):
        place(gm, ["5g.30gb"])


def test_new_models_tables_and_layouts() -> None:
    # Issue 13, gap 9: B200 (7 x 8 slots) and RTX PRO 6000 Blackwell (4 compute on 12 units).
    b200 = model("b200")
    ids = {
        p.name: (p.profile_id, p.instance_count, tuple(str(x) for x in p.placements))
        for p in b200.profiles
    }
    assert ids["1g.23gb"] == (19, 7, tuple(f"{k}:1" for k in range(7)))
    assert ids["1g.23gb+me"][:2] == (20, 1)
    assert ids["1g.45gb"] == (15, 4, ("0:2", "2:2", "4:2", "6:2"))
    assert ids["2g.45gb"] == (14, 3, ("0:2", "2:2", "4:2"))
    assert ids["3g.90gb"] == (9, 2, ("0:4", "4:4"))
    assert ids["4g.90gb"] == (5, 1, ("0:4",))
    assert ids["7g.180gb"] == (0, 1, ("0:8",))
    assert (b200.multiprocessors, b200.memory_slots, b200.compute_slices) == (148, 8, 7)
    assert len(enumerate_layouts(b200)) == 19  # same chip pattern as the A100
    rtx = model("rtx-pro-6000")
    assert (rtx.compute_slices, rtx.memory_slots, rtx.max_mig_devices) == (4, 12, 4)
    got = {p.name: (p.profile_id, tuple(str(x) for x in p.placements)) for p in rtx.profiles}
    assert got["1g.24gb"] == (14, ("0:3", "3:3", "6:3", "9:3"))
    assert got["2g.48gb"] == (5, ("0:6", "6:6"))
    assert got["4g.96gb"] == (0, ("0:12",))
    assert {p.variant for p in rtx.profiles} == {"standard", "me", "gfx", "me_all", "no_me"}
    assert {lay.name for lay in enumerate_layouts(rtx)} == {
        "4g.96gb",
        "2g.48gb+2g.48gb",
        "2g.48gb+1g.24gb+1g.24gb",
        "1g.24gb+1g.24gb+1g.24gb+1g.24gb",
    }
    assert place(rtx, ["2g.48gb", "1g.24gb"]).name == "2g.48gb+1g.24gb"


@pytest.mark.parametrize("key", ["a30-24gb", "a100-40gb", "h100-80gb"])
def test_layouts_are_listed_in_one_order_whatever_the_hash_seed(key: str) -> None:
    """With ``+me`` profiles two layouts could tie on sizes and places; the order then
    followed set iteration, which changes with PYTHONHASHSEED (``miso layouts --include-me``
    printed them differently from one run to the next)."""
    from miso_cli.gpu.layouts import layout_order

    layouts = enumerate_layouts(model(key), include_me=True, include_double_memory=True)
    keys = [layout_order(lay) for lay in layouts]
    assert len(set(map(repr, keys))) == len(keys)  # a total order: no two layouts tie
    assert keys == sorted(keys)


def test_the_listing_is_the_same_under_two_hash_seeds() -> None:
    import os
    import subprocess
    import sys

    code = (
        "from miso_cli.gpu.layouts import enumerate_layouts; from miso_cli.gpu.profiles import "
        "model; print([l.name for l in enumerate_layouts(model('a30-24gb'), include_me=True)])"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outs) == 1
