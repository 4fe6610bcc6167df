"""scripts/reading_probe.py's deciding facts: what it counts as a caption read right, per family.

A first version of this count matched "The X bar is the tallest" but not the caption's lower-case
"the Y bar is the shortest" (the bar graphs' captions of that time), and reported bar graphs read right
that were half read."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

from svrd.sample.families import FAMILIES

ROOT = Path(__file__).resolve().parents[1]


def _probe():
    spec = importlib.util.spec_from_file_location("reading_probe", ROOT / "scripts" / "reading_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_facts_of_hand_written_captions():
    facts = _probe().deciding_facts
    assert facts("earth-science", "A bar graph of the average monthly temperature in Alba, with bars for April "
                 "and December. April has 25°C and December has 5°C.") == [("April", "25"), ("December", "5")]
    assert facts("earth-science", "A bar graph of the average monthly precipitation in Ivry, with bars for May "
                 "and July. May has 300 mm and July has 50 mm.") == [("May", "300"), ("July", "50")]
    assert facts("chemistry", "Two beakers labeled Solution A and Solution B, each with 25 mL of solvent. "
                 "Solution A has 4 orange particles and Solution B has 1 orange particle.") == ["4", "1"]
    assert facts("geography", "A map with 3 states: Halden (teal) at the top right, Avalon (red) at the center, "
                 "and Corvo (green) at the bottom left. North is at the top.") == [
        ("Avalon", "the center"), ("Corvo", "the bottom left"), ("Halden", "the top right")]
    assert facts("biology", "A food web with grass, rabbit, and fox. Arrows point from grass to rabbit and "
                 "rabbit to fox.") == ["grass to rabbit", "rabbit to fox"]
    assert facts("biology", "A food web with algae, snail, tadpole, and heron. Arrows point from algae to "
                 "tadpole, snail to heron, and tadpole to heron.") == [
        "algae to tadpole", "snail to heron", "tadpole to heron"]
    # a caption with one fact wrong is not read right
    assert facts("chemistry", "Solution A has 4 red particles and Solution B has 2 red particles.") != facts(
        "chemistry", "Solution A has 4 red particles and Solution B has 1 red particle.")


def test_every_generated_caption_yields_all_its_facts():
    """On the generator's own captions: two counts, a value for every month that has a bar, as many
    state-place pairs as the map has states, as many arrows as the caption's list names."""
    facts = _probe().deciding_facts
    rng = random.Random(0)
    by_name = {f.name: f for f in FAMILIES}
    for _ in range(20):
        assert len(facts("chemistry", by_name["concentration"].make(rng).caption)) == 2
        caption = by_name["climate_graph"].make(rng).caption
        months = caption.split("with bars for ")[1].split(".")[0].split(" and ")
        assert [m for m, _ in facts("earth-science", caption)] == months
        caption = by_name["compass_map"].make(rng).caption
        assert len(facts("geography", caption)) == int(caption.split("A map with ")[1].split()[0])
        caption = by_name["food_web"].make(rng).caption
        assert len(facts("biology", caption)) == caption.split("Arrows point from")[1].count(" to ")
