"""Profile/step-time rows: the CSV data contract of ``miso fit`` and ``miso predict``.

One row per job (per job *in a mix*, for co-located profiles):

* ``workload`` (required): ``<family>_<variant>``, e.g. ``resnet_256``; the family
  (the part before the first ``_``) is the unit of grouped cross-validation;
* ``mix`` (optional): rows with the same id ran together under MPS, so each is
  the other's co-runner; ids are scoped to the file they come from;
* ``jobs_in_mix`` (optional, default 1): real jobs in that mix;
* ``mps_<pct>``: step time at that active-thread percentage;
* ``mig_<g>g``: step time alone on an instance of ``g`` compute slices (empty:
  does not fit, or not measured);
* ``memory_mb`` (optional): the job's peak GPU memory, for fit checks.

Units are free but must be consistent within a row: everything downstream uses
ratios to ``mps_100`` and ``mig_7g`` only.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miso_cli.errors import BadInput

MPS_COLUMN = re.compile(r"^mps_(\d+)$")
MIG_COLUMN = re.compile(r"^mig_(\d+)g$")
FULL_LEVEL = 100  # the MPS level every profile is relative to


@dataclass(frozen=True)
class ProfileRow:
    """One job's MPS profile, and its measured MIG step times when known."""

    workload: str
    mps: dict[int, float]  # active-thread % -> step time
    mig: dict[int, float] = field(default_factory=dict)  # compute slices -> step time
    jobs_in_mix: int = 1
    mix: str | None = None  # globally unique once loaded (file-scoped ids are prefixed)
    memory_mb: float | None = None
    source: str = ""  # "file.csv:12", for messages

    @property
    def family(self) -> str:
        return family_of(self.workload)

    def ratio(self, slices: int, full: int = 7) -> float | None:
        """Measured step time on ``slices`` relative to the whole GPU, when both are known."""
        t, t_full = self.mig.get(slices), self.mig.get(full)
        if t is None or t_full is None:
            return None
        return t / t_full

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "mix": self.mix,
            "jobs_in_mix": self.jobs_in_mix,
            "mps": {str(k): v for k, v in sorted(self.mps.items(), reverse=True)},
            "mig": {str(k): v for k, v in sorted(self.mig.items(), reverse=True)},
            "memory_mb": self.memory_mb,
            "source": self.source,
        }

    @staticmethod
    def from_json(obj: dict[str, Any]) -> ProfileRow:
        return ProfileRow(
            workload=str(obj["workload"]),
            mps={int(k): float(v) for k, v in obj.get("mps", {}).items()},
            mig={int(k): float(v) for k, v in obj.get("mig", {}).items()},
            jobs_in_mix=int(obj.get("jobs_in_mix", 1)),
            mix=obj.get("mix"),
            memory_mb=obj.get("memory_mb"),
            source=str(obj.get("source", "")),
        )


def family_of(workload: str) -> str:
    return workload.split("_", 1)[0]


def read_profile_csv(
    path: Path | str, *, require_mps: bool = False, require_mig_7g: bool = False
) -> list[ProfileRow]:
    """Read a profile CSV; every problem is a :class:`BadInput` naming file, line and column.

    The file needs an ``mps_100`` column and a lower level. ``require_mps``: every
    row needs them filled (otherwise a row without a profile is kept: training
    skips it, prediction falls back to the prior's centre). ``require_mig_7g``:
    each row needs ``mig_7g`` (what training targets are relative to).
    """
    from miso_cli.spec.textfile import csv_reader, positive_cell

    path = Path(path)
    rows: list[ProfileRow] = []
    with csv_reader(path, "profile CSV") as reader:
        fields = [f.strip() for f in (reader.fieldnames or [])]
        if "workload" not in fields:
            raise BadInput(f"{path}:1: needs a 'workload' column", hint="see `miso fit --help`")
        reader.fieldnames = fields
        mps_cols = {c: int(m.group(1)) for c in fields if (m := MPS_COLUMN.match(c))}
        mig_cols = {c: int(m.group(1)) for c in fields if (m := MIG_COLUMN.match(c))}
        for c, pct in mps_cols.items():
            if not 0 < pct <= 100:
                raise BadInput(f"{path}:1: column {c}: MPS level must be 1..100")
        for c, g in mig_cols.items():
            if g < 1:
                raise BadInput(f"{path}:1: column {c}: compute slices must be >= 1")
        if FULL_LEVEL not in mps_cols.values() or len(mps_cols) < 2:
            raise BadInput(
                f"{path}:1: needs an mps_100 column and at least one lower level (e.g. mps_50)"
            )
        if require_mig_7g and "mig_7g" not in mig_cols:
            raise BadInput(f"{path}:1: training data needs a mig_7g column")
        for raw in reader:
            line = reader.line_num
            if None in raw:  # more cells than header names
                raise BadInput(f"{path}:{line}: more cells than columns in the header")
            workload = (raw.get("workload") or "").strip()
            if not workload:
                raise BadInput(f"{path}:{line}: column workload: empty")
            mps: dict[int, float] = {}
            for c, pct in mps_cols.items():
                v = positive_cell(path, line, c, raw.get(c) or "")
                if v is not None:
                    mps[pct] = v
            mig: dict[int, float] = {}
            for c, g in mig_cols.items():
                v = positive_cell(path, line, c, raw.get(c) or "")
                if v is not None:
                    mig[g] = v
            if require_mps and (FULL_LEVEL not in mps or len(mps) < 2):
                raise BadInput(
                    f"{path}:{line}: workload {workload!r} needs mps_100 and at least one "
                    "lower MPS level"
                )
            if require_mig_7g and 7 not in mig:
                raise BadInput(f"{path}:{line}: column mig_7g: empty (training rows need it)")
            jobs_text = (raw.get("jobs_in_mix") or "").strip()
            jobs = 1
            if jobs_text:
                try:
                    jobs = int(jobs_text)
                except ValueError:
                    raise BadInput(
                        f"{path}:{line}: column jobs_in_mix: {jobs_text!r} is not an integer"
                    ) from None
                if jobs < 1:
                    raise BadInput(f"{path}:{line}: column jobs_in_mix: must be >= 1")
            mix_text = (raw.get("mix") or "").strip()
            memory = positive_cell(path, line, "memory_mb", raw.get("memory_mb") or "")
            rows.append(
                ProfileRow(
                    workload=workload,
                    mps=mps,
                    mig=mig,
                    jobs_in_mix=jobs,
                    mix=f"{path.name}#{mix_text}" if mix_text else None,
                    memory_mb=memory,
                    source=f"{path}:{line}",
                )
            )
    if not rows:
        raise BadInput(f"{path}: no data rows")
    _check_mixes(path, rows)
    return rows


def _check_mixes(path: Path, rows: Sequence[ProfileRow]) -> None:
    """A mix cannot hold more rows than it says it has jobs."""
    sizes = Counter(r.mix for r in rows if r.mix is not None)
    for r in rows:
        if r.mix is not None and sizes[r.mix] > r.jobs_in_mix:
            raise BadInput(
                f"{r.source}: mix {r.mix.split('#', 1)[1]!r} has {sizes[r.mix]} rows but "
                f"jobs_in_mix is {r.jobs_in_mix}"
            )


def read_many(
    paths: Iterable[Path | str], *, require_mps: bool = False, require_mig_7g: bool = False
) -> list[ProfileRow]:
    """Rows of several files; mix ids stay scoped to their file."""
    out: list[ProfileRow] = []
    seen: set[str] = set()
    for i, p in enumerate(paths):
        rows = read_profile_csv(p, require_mps=require_mps, require_mig_7g=require_mig_7g)
        name = Path(p).name
        if name in seen:  # two files with one name: keep their mix ids apart
            rows = [
                ProfileRow(
                    r.workload,
                    r.mps,
                    r.mig,
                    r.jobs_in_mix,
                    f"{i}:{r.mix}" if r.mix else None,
                    r.memory_mb,
                    r.source,
                )
                for r in rows
            ]
        seen.add(name)
        out.extend(rows)
    return out


def summarize(rows: Sequence[ProfileRow]) -> dict[str, Any]:
    """What a model was trained on: counts per family, slices and levels seen."""
    families = Counter(r.family for r in rows)
    slices = Counter(g for r in rows for g in r.mig if r.ratio(g) is not None and g != 7)
    levels = Counter(p for r in rows for p in r.mps)
    return {
        "rows": len(rows),
        "workloads": len({r.workload for r in rows}),
        "families": dict(sorted(families.items())),
        "mixes": len({r.mix for r in rows if r.mix is not None}),
        "target_rows": {f"mig_{g}g": n for g, n in sorted(slices.items(), reverse=True)},
        "mps_levels": sorted(levels, reverse=True),
        "sources": sorted({r.source.rsplit(":", 1)[0] for r in rows if r.source}),
    }
