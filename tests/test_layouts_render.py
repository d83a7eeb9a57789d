"""The slot map that `miso layouts` draws for people."""

from __future__ import annotations

from miso_cli.cli.layouts import slot_map
from miso_cli.gpu.layouts import Layout, place
from miso_cli.gpu.profiles import MODELS


def test_slot_map_shows_each_instance_in_its_slots() -> None:
    a100 = MODELS["a100-40gb"]
    assert slot_map(place(a100, ["4g.20gb", "2g.10gb", "1g.5gb"]), 8) == "4444|22|1|."
    assert slot_map(place(a100, ["3g.20gb@4", "1g.5gb@1"]), 8) == ".|1|.|.|3333"
    assert slot_map(place(a100, ["7g.40gb"]), 8) == "77777777"
    assert slot_map(Layout(()), 8) == ".|.|.|.|.|.|.|."
