"""Task families of the sample dataset, each modelled on a real ScienceQA image-question skill.

A family's `make(rng)` returns an `Item`: the question, the right option and the distractors,
hint, grade, lecture, solution and caption, and the image (PIL, 128 x 128 RGB). Options are
ordered (and the answer index set) by the caller, so letters can be balanced across a family.

Design rules (a tiny student sees the image at 64 x 64):
- every decisive detail is a big shape in a strong colour: region positions, the red north
  arrow, pole colours (N red, S blue), at most 9 large particles, thick arrows with big heads,
  bar heights on a fixed scale;
- names that appear as text in the options are bound to a fixed colour across the whole
  dataset (states on the map, organisms in a food web), because labels are unreadable at 64 px;
  an organism also has a fixed place, inside one 16-px patch, so that reading a food web is
  seeing which of the few places an arrow can take holds one;
- the solution states the decisive visual facts and then the conclusion, in 1-3 sentences.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from PIL import Image

from svrd.sample.draw import COLOURS, DARK, SIZE, WHITE, arrow, canvas, centered_text

TASK = "closed choice"


@dataclass
class Item:
    question: str
    correct: str
    distractors: list[str]
    hint: str
    grade: str
    lecture: str
    solution: str
    caption: str
    image: Image.Image


@dataclass(frozen=True)
class Family:
    name: str
    subject: str
    topic: str
    category: str
    skill: str
    make: object = field(repr=False)  # Callable[[random.Random], Item]


def _join(words: list[str]) -> str:
    """'a', 'a and b', 'a, b, and c' (ScienceQA's serial comma)."""
    if len(words) <= 2:
        return " and ".join(words)
    return ", ".join(words[:-1]) + ", and " + words[-1]


# --------------------------------------------------------------------------------------------
# 1. Compass map: "Which of these states is farthest north?"
# --------------------------------------------------------------------------------------------

# Made-up states (no world knowledge to contradict), each always drawn in the same colour.
STATES = {
    "Avalon": "red", "Brisa": "blue", "Corvo": "green", "Delmar": "orange",
    "Esmer": "purple", "Falun": "yellow", "Galen": "pink", "Halden": "teal",
}
_ROW = ("top", "middle", "bottom")
_COL = ("left", "center", "right")
# North is at the top, as on ScienceQA's maps: each direction is one side of the map, and the
# state farthest that way is the one state on that side (its row or column holds no other state).
_SIDE = {"north": ("top", lambda r, c: r == 0), "south": ("bottom", lambda r, c: r == 2),
         "west": ("left", lambda r, c: c == 0), "east": ("right", lambda r, c: c == 2)}

MAP_LECTURE = (
    "Maps have four cardinal directions: north, south, east, and west. A compass rose shows them, "
    "and its red arrow points north. On this map north is at the top, south at the bottom, east on "
    "the right, and west on the left."
)


def _cell_words(r: int, c: int) -> str:
    if r == 1 and c == 1:
        return "the center"
    if r == 1:
        return f"the {_COL[c]}"
    if c == 1:
        return f"the {_ROW[r]}"
    return f"the {_ROW[r]} {_COL[c]}"


def _draw_compass(draw, cx: float, cy: float) -> None:
    for (vx, vy), north in (((0, -1), True), ((0, 1), False), ((1, 0), False), ((-1, 0), False)):
        length, half = (16, 6) if north else (11, 4)
        px, py = -vy, vx
        pts = [(cx + vx * length, cy + vy * length), (cx + px * half, cy + py * half), (cx - px * half, cy - py * half)]
        draw.polygon(pts, fill=COLOURS["red"] if north else DARK)
    draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=WHITE, outline=DARK)
    centered_text(draw, (cx, cy - 22), "N", 9, fill=COLOURS["red"])


def make_compass_map(rng: random.Random) -> Item:
    direction = rng.choice(["north", "south", "east", "west"])
    side, on_side = _SIDE[direction]
    corner = rng.choice([(0, 0), (0, 2), (2, 0), (2, 2)])  # the compass rose's cell
    free = [(r, c) for r in range(3) for c in range(3) if (r, c) != corner]
    n_states = 4 if rng.random() < 0.5 else 3
    while True:
        cells = rng.sample(free, n_states)
        if sum(on_side(r, c) for r, c in cells) == 1:
            break
    names = rng.sample(sorted(STATES), n_states)
    winner = next(n for (r, c), n in zip(cells, names, strict=True) if on_side(r, c))

    img, draw = canvas()
    draw.rectangle([3, 3, SIZE - 4, SIZE - 4], fill=(238, 228, 198), outline=DARK, width=2)
    for (r, c), name in zip(cells, names, strict=True):
        cx = 24 + 40 * c + rng.randint(-3, 3)
        cy = 24 + 40 * r + rng.randint(-3, 3)
        w, h = rng.randint(14, 17), rng.randint(11, 14)
        pts = [(cx - w + rng.randint(-2, 2), cy - h + rng.randint(-2, 2)),
               (cx + rng.randint(-3, 3), cy - h - rng.randint(0, 3)),
               (cx + w + rng.randint(-2, 2), cy - h + rng.randint(-2, 2)),
               (cx + w + rng.randint(0, 3), cy + rng.randint(-3, 3)),
               (cx + w + rng.randint(-2, 2), cy + h + rng.randint(-2, 2)),
               (cx + rng.randint(-3, 3), cy + h + rng.randint(0, 3)),
               (cx - w + rng.randint(-2, 2), cy + h + rng.randint(-2, 2)),
               (cx - w - rng.randint(0, 3), cy + rng.randint(-3, 3))]
        draw.polygon(pts, fill=COLOURS[STATES[name]], outline=DARK)
        centered_text(draw, (cx, cy), name, 8, fill=WHITE if STATES[name] not in ("yellow",) else (20, 20, 20))
    _draw_compass(draw, 24 + 40 * corner[1], 28 + 40 * corner[0])

    where = [f"{name} ({STATES[name]}) at {_cell_words(r, c)}" for (r, c), name in sorted(zip(cells, names, strict=True))]
    caption = f"A map with {len(names)} states: {_join(where)}. North is at the top."
    solution = (f"{direction.capitalize()} is toward the {side} of the map. {winner} is the only state at the {side}. "
                f"So, {winner} is farthest {direction}.")
    return Item(
        question=f"Which of these states is farthest {direction}?",
        correct=winner,
        distractors=[n for n in names if n != winner],
        hint="",
        grade=rng.choice(["grade2", "grade3", "grade4"]),
        lecture=MAP_LECTURE,
        solution=solution,
        caption=caption,
        image=img,
    )


# --------------------------------------------------------------------------------------------
# 2. Magnets: "Will these magnets attract or repel each other?"
# --------------------------------------------------------------------------------------------

POLE_COLOUR = {"N": COLOURS["red"], "S": COLOURS["blue"]}
POLE_WORD = {"N": "north", "S": "south"}
MAGNET_LECTURE = (
    "Magnets can pull or push on each other without touching. Every magnet has a north pole (N) "
    "and a south pole (S). Opposite poles attract, and like poles repel."
)


def make_magnets(rng: random.Random) -> Item:
    vertical = rng.random() < 0.4
    first = rng.choice(["NS", "SN"])
    second = rng.choice(["NS", "SN"])
    gap = rng.randint(10, 20)
    length = (SIZE - 12 - gap) // 2
    thick = rng.randint(26, 32)
    shift = rng.randint(-20, 20)  # across the bars' axis: more distinct images (no twins across splits)
    img, draw = canvas()
    for k, poles in enumerate((first, second)):
        start = 6 + k * (length + gap)
        for h, pole in enumerate(poles):
            a = start + h * (length // 2)
            b = start + (h + 1) * (length // 2)
            lo, hi = SIZE // 2 - thick // 2 + shift, SIZE // 2 + thick // 2 + shift
            box = [lo, a, hi, b] if vertical else [a, lo, b, hi]
            draw.rectangle(box, fill=POLE_COLOUR[pole], outline=DARK, width=1)
            centered_text(draw, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), pole, 14, fill=WHITE)
    near_a, near_b = first[1], second[0]
    attract = near_a != near_b
    order = ", ".join(first + second)
    if vertical:
        caption = f"Two bar magnets, one above the other. From top to bottom the poles are {order}."
    else:
        caption = f"Two bar magnets side by side. From left to right the poles are {order}."
    if attract:
        reason = ("The north pole of one magnet is closest to the south pole of the other magnet. "
                  "Opposite poles attract. So, these magnets will attract each other.")
    else:
        word = POLE_WORD[near_a]
        reason = (f"The {word} pole of one magnet is closest to the {word} pole of the other magnet. "
                  "Like poles repel. So, these magnets will repel each other.")
    grade = rng.choice(["grade2", "grade3", "grade4", "grade5"])
    hint = "Two magnets are placed as shown."
    if grade in ("grade2", "grade3"):
        hint += "\nHint: Magnets that attract pull together. Magnets that repel push apart."
    return Item(
        question="Will these magnets attract or repel each other?",
        correct="attract" if attract else "repel",
        distractors=["repel" if attract else "attract"],
        hint=hint,
        grade=grade,
        lecture=MAGNET_LECTURE,
        solution=reason,
        caption=caption,
        image=img,
    )


# --------------------------------------------------------------------------------------------
# 3. Particles in beakers: "Which solution has a higher concentration of purple particles?"
# --------------------------------------------------------------------------------------------

PARTICLE_COLOURS = ("purple", "green", "blue", "red", "orange", "pink")
MAX_PARTICLES = 6  # per beaker: few enough to count from the student's 64 image patches
NEITHER = "neither; their concentrations are the same"
SOLUTION_LECTURE = (
    "A solution is made of solute particles mixed into a solvent. Concentration is the ratio of "
    "solute to solvent: concentration = particles of solute / volume of solvent. When the volumes "
    "are the same, the solution with more solute particles has the higher concentration."
)


def _beaker(draw, x0: int, count: int, colour: str, label: str, volume: int) -> None:
    """A 40-px beaker whose particles sit in fixed slots, bottom row first, one per 16-px patch of the
    128-px image (2 columns x 3 rows), so that counting them is counting patches. Particles drawn at
    random places straddled patch edges, and the student counted them right on 7% of images; the slots
    and twice the caption pre-training read 73% (README, "The embedded sample")."""
    x1, top, bottom, liquid = x0 + 40, 26, 112, 58
    draw.rectangle([x0, liquid, x1, bottom], fill=(205, 228, 250))
    draw.line([(x0, top), (x0, bottom), (x1, bottom), (x1, top)], fill=DARK, width=2)
    draw.line([(x0 - 3, top), (x0, top)], fill=DARK, width=2)
    draw.line([(x1, top), (x1 + 3, top)], fill=DARK, width=2)
    centered_text(draw, (x0 + 20, top - 8), f"{volume} mL", 9, clamp=True)
    centered_text(draw, (x0 + 20, bottom + 8), label, 10, clamp=True)
    for k in range(count):
        cx, cy = x0 + 12 + 16 * (k % 2), 104 - 16 * (k // 2)
        draw.ellipse([cx - 6, cy - 6, cx + 6, cy + 6], fill=COLOURS[colour], outline=(30, 30, 30))


def make_concentration(rng: random.Random) -> Item:
    colour = rng.choice(PARTICLE_COLOURS)
    volume = rng.choice([25, 30, 35, 40, 45, 50])
    outcome = rng.choice(["A", "B", "same"])
    if outcome == "same":
        a = b = rng.randint(1, MAX_PARTICLES)
    else:
        hi = rng.randint(2, MAX_PARTICLES)
        lo = rng.randint(1, hi - 1)
        a, b = (hi, lo) if outcome == "A" else (lo, hi)
    img, draw = canvas()
    _beaker(draw, 12, a, colour, "Solution A", volume)
    _beaker(draw, 76, b, colour, "Solution B", volume)

    def n(k: int) -> str:
        return f"{k} {colour} particle" + ("" if k == 1 else "s")

    caption = (f"Two beakers labeled Solution A and Solution B, each with {volume} mL of solvent. "
               f"Solution A has {n(a)} and Solution B has {n(b)}.")
    # The counts' comparison is a step of its own: given both counts right, the student answered equal
    # counts right 13 of 27 times without it and 32 of 34 with it (README).
    relation = "more than" if a > b else "less than" if a < b else "the same as"
    facts = (f"Solution A has {n(a)} in {volume} mL of solvent. Solution B has {n(b)} in {volume} mL of solvent. "
             f"{a} is {relation} {b}.")
    if outcome == "same":
        correct = NEITHER
        solution = f"{facts} They have the same number of {colour} particles per milliliter. So, their concentrations are the same."
    else:
        correct = f"Solution {outcome}"
        solution = f"{facts} So, Solution {outcome} has a higher concentration of {colour} particles."
    return Item(
        question=f"Which solution has a higher concentration of {colour} particles?",
        correct=correct,
        distractors=[c for c in ("Solution A", "Solution B", NEITHER) if c != correct],
        hint=f"The diagram below is a model of two solutions. Each {colour} ball represents one particle of solute.",
        grade=rng.choice(["grade6", "grade7", "grade8"]),
        lecture=SOLUTION_LECTURE,
        solution=solution,
        caption=caption,
        image=img,
    )


# --------------------------------------------------------------------------------------------
# 4. Food web: "Which of these organisms contains matter that was once part of the grass?"
# --------------------------------------------------------------------------------------------

# Six roles at fixed places: producers at the bottom, primary consumers in the middle, predators at the top,
# the first of each pair on the left. The ecosystem tints the background.
ECOSYSTEMS = {
    "meadow": (("grass", "green"), ("clover", "yellow"), ("rabbit", "brown"), ("mouse", "gray"),
               ("fox", "orange"), ("hawk", "purple")),
    "pond": (("algae", "green"), ("duckweed", "yellow"), ("snail", "brown"), ("tadpole", "gray"),
             ("fish", "orange"), ("heron", "purple")),
}
BACKGROUND = {"meadow": (236, 247, 222), "pond": (222, 236, 250)}
FOODWEB_LECTURE = (
    "A food web is a model that shows where organisms in an ecosystem get their food. Each arrow "
    "points from the organism that is eaten to the organism that eats it, so matter moves along the arrows."
)
NODE_X = (40, 88)       # centres of patch columns 2 and 5
NODE_Y = (120, 72, 24)  # centres of patch rows 7, 4 and 1 (producers, consumers, predators)
# Arrows between two levels: every organism has food or is food, so each of the 7 sets of arrows
# between two pairs that leaves no organism of either pair without an arrow.
_LINKS = [s for s in ([(a, b) for a in (0, 1) for b in (0, 1) if m >> (2 * a + b) & 1] for m in range(16))
          if {a for a, _ in s} == {0, 1} and {b for _, b in s} == {0, 1}]


def _level(role: int) -> int:
    return role // 2


def make_food_web(rng: random.Random) -> Item:
    """A food web whose arrows the student reads. With the organisms shuffled within each level and
    meadow and pond drawn alike, the distilled student's caption had every arrow right on 10% of test
    webs and it answered at chance; at fixed places on the ecosystem's tint, 59 of 61 (README)."""
    eco = rng.choice(sorted(ECOSYSTEMS))
    names = [n for n, _ in ECOSYSTEMS[eco]]
    colour = dict(ECOSYSTEMS[eco])
    # The options are the two predators, and the question's organism leads to one of them by a chain of
    # arrows with one arrow out of each organism on it: one arrow from a consumer, two from a producer.
    # Following arrows always ends at the top, so the student stops there.
    chains = []
    while not chains:
        edges = sorted([(a, 2 + b) for a, b in rng.choice(_LINKS)] + [(2 + a, 4 + b) for a, b in rng.choice(_LINKS)])
        out = {k: [b for a, b in edges if a == k] for k in range(6)}
        for src in range(4):
            path = [src]
            while _level(path[-1]) < 2 and len(out[path[-1]]) == 1:
                path = path + out[path[-1]]
            if _level(path[-1]) == 2:
                chains.append(path)
    longer = [p for p in chains if len(p) == 3]
    path = rng.choice(longer if longer and rng.random() < 0.5 else chains)
    src, target = path[0], path[-1]
    decoy = target ^ 1

    node_r = 7
    pos = {k: (NODE_X[k % 2] + rng.randint(-1, 1), NODE_Y[_level(k)] + rng.randint(-1, 1)) for k in range(6)}
    img, draw = canvas(BACKGROUND[eco])
    for a, b in edges:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        d = math.hypot(x1 - x0, y1 - y0)
        ux, uy = (x1 - x0) / d, (y1 - y0) / d
        arrow(draw, (x0 + ux * (node_r + 1), y0 + uy * (node_r + 1)), (x1 - ux * (node_r + 1), y1 - uy * (node_r + 1)),
              fill=(30, 30, 30), width=4, head_len=10, head_half=6)
    for k in range(6):
        x, y = pos[k]
        draw.ellipse([x - node_r, y - node_r, x + node_r, y + node_r], fill=COLOURS[colour[names[k]]], outline=DARK, width=1)
        centered_text(draw, (x + (-26 if k % 2 == 0 else 26), y), names[k], 8, halo=True)

    src_n, tgt_n, decoy_n = names[src], names[target], names[decoy]
    arrows_txt = _join([f"{names[a]} to {names[b]}" for a, b in edges])
    caption = f"A food web with {_join(names)}. Arrows point from {arrows_txt}."
    steps = " ".join(f"An arrow points from the {names[a]} to the {names[b]}." for a, b in zip(path, path[1:], strict=False))
    # The answer is the last organism the arrows reach: the conclusion copies the name just written.
    solution = (f"Follow the arrows from the {src_n}. {steps} So, the {tgt_n} contains matter that was once part "
                f"of the {src_n}.")
    return Item(
        question=f"Which of these organisms contains matter that was once part of the {src_n}?",
        correct=tgt_n,
        distractors=[decoy_n],
        hint=(f"Below is a food web from a {eco} ecosystem.\nA food web models how the matter eaten by organisms "
              "moves through an ecosystem. The arrows show how matter moves between organisms."),
        grade=rng.choice(["grade4", "grade5", "grade6"]),
        lecture=FOODWEB_LECTURE,
        solution=solution,
        caption=caption,
        image=img,
    )


# --------------------------------------------------------------------------------------------
# 5. Climate bar graph: "Which of these months is the hottest on average in Alba?"
# --------------------------------------------------------------------------------------------

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
TOWNS = ("Alba", "Boros", "Cantal", "Dunmore", "Elora", "Fenwick", "Garan", "Holloway", "Ivry", "Juno")
CLIMATE_LECTURE = (
    "Climate is the pattern of weather in a place over many years. A climate graph shows the average "
    "temperature or precipitation for each month. A taller bar shows a higher average."
)
# question word -> (measure, unit, bar colour, value of one 16-px step of the scale). Only the highest
# is asked for. With the coldest and driest asked too, the student compared the two
# values right 55 times of 58 and then named the month at chance: "50 is less than 200" means the
# first month for "driest" and the second for "wettest", and combining the question's direction with
# the comparison in one word was beyond it. Asked one way, "more" always means the first month, as it
# means Solution A for the beakers, and it answers 96.55% (README, "The embedded sample").
_MEASURES = {
    "hottest": ("temperature", "°C", "red", 5),
    "wettest": ("precipitation", " mm", "blue", 50),
}
MONTH_ABBR = tuple(m[:3] for m in MONTHS)
BAR_COLUMNS = (40, 80)  # left edges of the two bars: the 3rd and 6th 16-px patch columns
BAR_BASE = 112  # the x axis, on a patch row's edge: a bar k steps tall covers exactly k patches


def make_climate(rng: random.Random) -> Item:
    word = rng.choice(sorted(_MEASURES))
    measure, unit, bar, step = _MEASURES[word]
    town = rng.choice(TOWNS)
    # Bars for the two months asked about, in calendar order, each one patch wide and a whole number of
    # patches tall (1-6, different), the month's name under it. Reading a value is counting a bar's
    # patches, as counting a beaker's particles is; the answer is then a comparison of two numbers in the
    # text. Values are drawn independently of the month: no season gives the answer away.
    picked = sorted(rng.sample(range(12), 2))
    heights = rng.sample(range(1, 7), 2)
    values = [h * step for h in heights]
    best = picked[values.index(max(values))]
    other = next(m for m in picked if m != best)

    img, draw = canvas()
    centered_text(draw, (64, 6), f"{town}: average {measure}", 8)
    for k in range(7):  # grid lines on the patch rows' edges, labelled in the measure's unit
        y = BAR_BASE - 16 * k
        draw.line([(24, y), (120, y)], fill=(215, 215, 215) if k else DARK, width=1)
        centered_text(draw, (12, y), str(k * step), 7, clamp=True)
    for x0, m, h in zip(BAR_COLUMNS, picked, heights, strict=True):
        draw.rectangle([x0 + 2, BAR_BASE - 16 * h, x0 + 13, BAR_BASE - 1], fill=COLOURS[bar])
        centered_text(draw, (x0 + 8, 120), MONTH_ABBR[m], 8)
    draw.line([(24, 16), (24, BAR_BASE)], fill=DARK, width=1)

    # The reasoning repeats the caption's facts word for word, then compares the two numbers as a step of
    # its own, in the caption's order, as the beakers' solution does.
    a, b = values
    facts = f"{MONTHS[picked[0]]} has {a}{unit} and {MONTHS[picked[1]]} has {b}{unit}."
    caption = (f"A bar graph of the average monthly {measure} in {town}, with bars for "
               f"{MONTHS[picked[0]]} and {MONTHS[picked[1]]}. {facts}")
    solution = (f"The {word} month has the higher average {measure}. {facts} "
                f"{a} is {'more' if a > b else 'less'} than {b}. So, {MONTHS[best]} is the {word} month on average "
                f"in {town}.")
    return Item(
        question=f"Which of these months is the {word} on average in {town}?",
        correct=MONTHS[best],
        distractors=[MONTHS[other]],
        hint=f"Use the graph to answer the question below. The graph shows the average monthly {measure} in {town}.",
        grade=rng.choice(["grade4", "grade5", "grade6"]),
        lecture=CLIMATE_LECTURE,
        solution=solution,
        caption=caption,
        image=img,
    )


FAMILIES: tuple[Family, ...] = (
    Family("compass_map", "social science", "geography", "Geography", "Read a map: cardinal directions",
           make_compass_map),
    Family("magnets", "natural science", "physics", "Magnets", "Identify magnets that attract or repel", make_magnets),
    Family("concentration", "natural science", "chemistry", "Solutions", "Compare concentrations of solutions",
           make_concentration),
    Family("food_web", "natural science", "biology", "Ecosystems", "Interpret food webs II", make_food_web),
    Family("climate_graph", "natural science", "earth-science", "Weather and climate",
           "Weather and climate around the world", make_climate),
)
