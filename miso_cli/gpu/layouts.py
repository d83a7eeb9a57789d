"""MIG layouts: which sets of GPU instances can coexist on one GPU, and where.

A layout is a set of instances, each a profile at a placement. Layouts are
enumerated from the profiles' placements and the GPU's resources, never from a
hand-written list:

* placements are in memory slots; two instances may not share a slot;
* the compute slices of all instances together may not exceed the GPU's
  (3g+3g on an A100 uses 8 memory slots but only 6 of 7 compute slices);
* no profile may have more instances than its ``instance_count``.

A layout is *maximal* when no further instance of any allowed profile fits.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from miso_cli.gpu.profiles import GpuModel, Placement, SliceProfile


def _fields_only(obj: object) -> dict[str, Any]:
    """What a pickle or copy of a layout object keeps: its fields, not its cached hash
    (a string's hash differs from one process to the next) or name."""
    return {k: v for k, v in obj.__dict__.items() if not k.startswith("_")}


@dataclass(frozen=True, order=True)
class Slice:
    """One GPU instance of a layout: a profile at a placement."""

    start: int
    size: int
    profile: str  # e.g. "3g.20gb"
    slices: int  # compute slices, e.g. 3

    def __hash__(self) -> int:
        # The hash the dataclass would compute, once: planners and the engine hash the
        # same instances again and again.
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.start, self.size, self.profile, self.slices))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict[str, Any]:
        return _fields_only(self)

    @property
    def placement(self) -> Placement:
        return Placement(self.start, self.size)

    @property
    def key(self) -> str:
        return f"{self.profile}@{self.start}"

    def to_json(self) -> dict[str, object]:
        return {
            "profile": self.profile,
            "slices": self.slices,
            "placement": {"start": self.start, "size": self.size},
        }


@dataclass(frozen=True)
class Layout:
    """A set of GPU instances on one GPU, ordered by placement."""

    slices: tuple[Slice, ...]

    def __hash__(self) -> int:
        # As Slice: the dataclass's hash, computed once.
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.slices,))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict[str, Any]:
        return _fields_only(self)

    @staticmethod
    def of(items: Iterable[Slice]) -> Layout:
        return Layout(tuple(sorted(items)))

    @property
    def name(self) -> str:
        """Profiles, largest first, joined by ``+`` (``4g.20gb+2g.10gb+1g.5gb``)."""
        name = self.__dict__.get("_name")
        if name is None:  # computed once: a layout never changes
            if not self.slices:
                name = "(empty)"
            else:
                ordered = sorted(self.slices, key=lambda s: (-s.slices, -s.size, s.start))
                name = "+".join(s.profile for s in ordered)
            object.__setattr__(self, "_name", name)
        return name

    @property
    def compute_slices(self) -> int:
        return sum(s.slices for s in self.slices)

    def counts(self) -> dict[str, int]:
        return dict(Counter(s.profile for s in self.slices))

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "instances": [s.to_json() for s in self.slices]}

    def __len__(self) -> int:
        return len(self.slices)


def slice_of(profile: SliceProfile, placement: Placement) -> Slice:
    return Slice(placement.start, placement.size, profile.name, profile.slices)


def allowed_profiles(
    model: GpuModel, *, include_me: bool = False, include_double_memory: bool = False
) -> list[SliceProfile]:
    """The profiles a layout may use: standard ones, plus +me / double-memory 1g on request."""
    out = []
    for p in model.profiles:
        if p.variant == "standard":
            out.append(p)
        elif p.variant == "me" and include_me:
            out.append(p)
        elif p.variant == "double_memory" and include_double_memory:
            out.append(p)
    return out


def _candidates(profiles: Sequence[SliceProfile]) -> list[tuple[SliceProfile, Placement]]:
    cands = [(p, pl) for p in profiles for pl in p.placements]
    cands.sort(key=lambda c: (c[1].start, -c[1].size, c[0].profile_id))
    return cands


def fits(
    model: GpuModel,
    current: Sequence[tuple[SliceProfile, Placement]],
    profile: SliceProfile,
    placement: Placement,
) -> bool:
    """Whether ``profile`` at ``placement`` can be added next to ``current``."""
    if placement not in profile.placements:
        return False
    used = set()
    compute = 0
    count = 0
    for p, pl in current:
        used.update(pl.slots)
        compute += p.slices
        if p.profile_id == profile.profile_id:
            count += 1
    if used.intersection(placement.slots):
        return False
    if compute + profile.slices > model.compute_slices:
        return False
    return count + 1 <= profile.instance_count


def enumerate_layouts(
    model: GpuModel,
    *,
    maximal: bool = True,
    include_me: bool = False,
    include_double_memory: bool = False,
) -> list[Layout]:
    """Every layout of ``model`` (only maximal ones by default), from the placements.

    Ordered by decreasing largest instance, then by name, so the output is stable.
    The empty layout is included when ``maximal`` is false.
    """
    profiles = allowed_profiles(
        model, include_me=include_me, include_double_memory=include_double_memory
    )
    cands = _candidates(profiles)
    found: list[list[tuple[SliceProfile, Placement]]] = []

    def grow(i: int, chosen: list[tuple[SliceProfile, Placement]]) -> None:
        if i == len(cands):
            found.append(list(chosen))
            return
        p, pl = cands[i]
        if fits(model, chosen, p, pl):
            chosen.append((p, pl))
            grow(i + 1, chosen)
            chosen.pop()
        grow(i + 1, chosen)

    grow(0, [])
    if maximal:
        found = [
            chosen
            for chosen in found
            if not any(fits(model, chosen, p, pl) for p, pl in cands if (p, pl) not in chosen)
        ]
    layouts = {Layout.of(slice_of(p, pl) for p, pl in chosen) for chosen in found}
    return sorted(layouts, key=layout_order)


def layout_order(lay: Layout) -> tuple[Any, ...]:
    """The order :func:`enumerate_layouts` lists layouts in: a total order, so the list
    never depends on set iteration (Python's hash seed). Decreasing largest instance, then
    the instances' sizes and places, then the name (``2g.12gb+me`` after ``2g.12gb``)."""
    return (
        -max((s.slices for s in lay.slices), default=0),
        [(-s.slices, s.start) for s in sorted(lay.slices, key=lambda s: (-s.slices, s.start))],
        lay.name,
    )


class LayoutError(ValueError):
    """A wanted set of instances does not fit on the GPU model."""


def place(
    model: GpuModel,
    wanted: Sequence[str],
    *,
    prefer: Layout | None = None,
) -> Layout:
    """Choose placements for profile names (``["4g.20gb", "2g.10gb", "1g.5gb"]``).

    A name may carry an explicit placement start (``3g.20gb@4``). Among the valid
    placements, keep as many instances of ``prefer`` (the GPU's current layout)
    as possible, then prefer the lowest starts for the largest instances, which
    leaves the most contiguous room free.
    """
    requested: list[tuple[SliceProfile, int | None]] = []
    for token in wanted:
        name, _, at = token.partition("@")
        try:
            profile = model.profile(name)
        except KeyError:
            known = ", ".join(p.name for p in model.profiles)
            raise LayoutError(
                f"{name!r} is not a MIG profile of {model.key} (known: {known})"
            ) from None
        start: int | None = None
        if at:
            if not at.isdigit():
                raise LayoutError(f"bad placement start in {token!r}: expected NAME@SLOT")
            start = int(at)
            if start not in {pl.start for pl in profile.placements}:
                starts = ", ".join(str(pl.start) for pl in profile.placements)
                raise LayoutError(
                    f"{profile.name} cannot start at slot {start} (allowed: {starts})"
                )
        requested.append((profile, start))
    # Largest first: fewer branches, and the tie-break below reads naturally.
    requested.sort(key=lambda r: (-r[0].slices, -r[0].memory_slots, r[0].profile_id))
    keep = set(prefer.slices) if prefer else set()
    best: tuple[tuple[int, list[int]], list[tuple[SliceProfile, Placement]]] | None = None

    def search(i: int, chosen: list[tuple[SliceProfile, Placement]]) -> None:
        nonlocal best
        if i == len(requested):
            kept = sum(1 for p, pl in chosen if slice_of(p, pl) in keep)
            score = (-kept, [pl.start for _, pl in chosen])
            if best is None or score < best[0]:
                best = (score, list(chosen))
            return
        profile, start = requested[i]
        for pl in profile.placements:
            if start is not None and pl.start != start:
                continue
            if fits(model, chosen, profile, pl):
                chosen.append((profile, pl))
                search(i + 1, chosen)
                chosen.pop()

    search(0, [])
    if best is None:
        raise LayoutError(
            f"{' + '.join(t for t in wanted) or '(nothing)'} does not fit on one {model.key}"
        )
    return Layout.of(slice_of(p, pl) for p, pl in best[1])


def sub_layouts(layout: Layout) -> list[Layout]:
    """Every subset of ``layout`` (instances removed), including the empty one."""
    out = []
    for r in range(len(layout.slices) + 1):
        for combo in itertools.combinations(layout.slices, r):
            out.append(Layout(tuple(combo)))
    return out
