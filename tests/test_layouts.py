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
