"""The slot map that `miso layouts` draws for people."""

from __future__ import annotations

import csv
import io
import re

import pytest

from miso_cli.cli.layouts import slot_map
from miso_cli.gpu.layouts import Layout, place
from miso_cli.gpu.profiles import MODELS
from tests.conftest import parse_envelope


def test_slot_map_shows_each_instance_in_its_slots() -> None:
    a100 = MODELS["a100-40gb"]
    assert slot_map(place(a100, ["4g.20gb", "2g.10gb", "1g.5gb"]), 8) == "4444|22|1|."
    assert slot_map(place(a100, ["3g.20gb@4", "1g.5gb@1"]), 8) == ".|1|.|.|3333"
    assert slot_map(place(a100, ["7g.40gb"]), 8) == "77777777"
    assert slot_map(Layout(()), 8) == ".|.|.|.|.|.|.|."


def _rows(text: str) -> list[list[str]]:
    """Table rows: a number first, compute (e.g. 7/7) last."""
    return [
        w for w in (ln.split() for ln in text.splitlines())
        if len(w) >= 2 and w[0].isdigit() and re.fullmatch(r"\d+/\d+", w[-1])
    ]  # fmt: skip


def _json_layouts(cli, model: str) -> list[dict]:
    code, out, _ = cli("layouts", "--model", model, "--include-me", "--json")
    assert code == 0
    return parse_envelope(out)["data"]["layouts"]


@pytest.mark.parametrize("model", ["h100-80gb", "a100-40gb", "h200-141gb"])
def test_piped_output_is_never_cut(cli, model: str) -> None:
    """Not a terminal: every column in full, whatever COLUMNS says."""
    want = _json_layouts(cli, model)
    code, out, _ = cli("layouts", "--model", model, "--include-me", env={"COLUMNS": "40"})
    assert code == 0 and "…" not in out
    rows = _rows(out)
    assert [r[0] for r in rows] == [str(n) for n in range(1, len(want) + 1)]  # the # column
    total = MODELS[model].compute_slices
    for row, lay in zip(rows, want, strict=True):
        assert row[2] == lay["name"]
        assert row[3] == f"{sum(i['slices'] for i in lay['instances'])}/{total}"


def test_narrow_terminal_keeps_number_and_compute(cli, monkeypatch) -> None:
    """At 80 columns on a terminal the layout name wraps; # and compute stay whole."""
    import io

    from rich.console import Console

    from miso_cli.cli import common

    buf = io.StringIO()
    monkeypatch.setattr(
        common, "stdout_console",
        lambda: Console(file=buf, width=80, force_terminal=True, color_system=None),
    )  # fmt: skip
    code, _, _ = cli("layouts", "--model", "h100-80gb", "--include-me")
    assert code == 0
    text = buf.getvalue()
    assert "…" not in text and " # " in text and "compute" in text
    assert max(len(ln) for ln in text.splitlines()) <= 80
    rows = _rows(text)
    assert len(rows) == len(_json_layouts(cli, "h100-80gb"))
    assert all(re.fullmatch(r"\d/7", r[-1]) for r in rows)


def test_csv_for_scripts(cli) -> None:
    want = _json_layouts(cli, "a30-24gb")
    code, out, _ = cli("layouts", "--model", "a30-24gb", "--include-me", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["layout"] for r in rows] == [lay["name"] for lay in want]
    assert all(r["gpu_compute_slices"] == "4" for r in rows)
    code, _, err = cli("layouts", "--model", "a30-24gb", "--format", "xml")
    assert code == 2 and "--format" in err
