"""Multiple-choice spatial questions answered from SynthSpatial's exact geometry, with explicit-3D reasoning.

Covers the 12 3DSRBench subtypes and CV-Bench-3D's Depth and Distance. Every reasoning line states one 3D fact
("The 3D location of the red cube is (x, y, z).") in the phrase forms the 3D-aware process reward looks for.
"""

from __future__ import annotations

import contextvars
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from spatialreasoner.synth.scene import Object3D, Scene
from spatialreasoner.taxonomy import CVB_CATEGORIES, SRB_SUBTYPES

SUBTYPES_3DSRBENCH = SRB_SUBTYPES
CATEGORIES_CVBENCH3D = CVB_CATEGORIES
# The phrase kinds each subtype's reasoning states (location, vector, dist_from, dist_between, cosine|angle,
# front, left), matching the 3D-aware process reward's requirements.
COT_KINDS: dict[str, tuple[str, ...]] = {
    "height_higher": ("location", "location"),
    "location_above": ("location", "location"),
    "location_closer_to_camera": ("location", "location", "dist_from", "dist_from"),
    "location_next_to": ("location", "location", "dist_between"),
    "orientation_in_front_of": ("location", "location", "vector", "front", "cosine"),
    "orientation_on_the_left": ("location", "location", "vector", "left", "cosine"),
    "orientation_viewpoint": ("location", "vector", "front", "cosine", "left", "cosine"),
    "multi_object_closer_to": ("location", "location", "location", "dist_between", "dist_between"),
    "multi_object_facing": ("location", "location", "location", "front", "vector", "cosine", "vector", "cosine"),
    "multi_object_viewpoint_towards_object": ("location", "location", "vector", "front", "cosine", "left", "cosine"),
    "multi_object_parallel": ("front", "front", "angle"),
    "multi_object_same_direction": ("front", "front", "angle"),
}
YES_NO = ("yes", "no")
QUADRANTS = ("front left", "front right", "back left", "back right")

# Margins (metres, cosines, degrees) below which a question would be ambiguous and is not asked.
HEIGHT_MARGIN = 0.25
DEPTH_MARGIN = 0.5
NEXT_TO_MAX, NOT_NEXT_TO_MIN = 2.0, 3.5
COSINE_MARGIN = 0.35
QUADRANT_MARGIN = 0.25
ALIGNED_MAX_DEG, NOT_ALIGNED_MIN_DEG = 20.0, 40.0


@dataclass(frozen=True)
class Question:
    """A question in its canonical option order; ``answer`` indexes ``options``. ``concluded``: the reasoning ends
    with a "Therefore, the answer is X" sentence (False: the reasoning itself ends on the decision)."""

    category: str
    question: str
    options: tuple[str, ...]
    answer: int
    reasoning: tuple[str, ...]
    objects: tuple[str, ...]
    concluded: bool = True

    def rotated(self, k: int) -> Question:
        """Options rotated left by ``k`` (3DSRBench's circular variants X-k)."""
        n = len(self.options)
        k %= n
        return Question(
            self.category,
            self.question,
            self.options[k:] + self.options[:k],
            (self.answer - k) % n,
            self.reasoning,
            self.objects,
            self.concluded,
        )

    @property
    def answer_letter(self) -> str:
        return "ABCD"[self.answer]

    def answer_cot(self) -> str:
        """Reasoning in <think>, the letter in <answer> (the SFT targets' format)."""
        conclusion = (f"Therefore, the answer is {self.answer_letter}. {self.options[self.answer]}.",) * self.concluded
        return (
            "<think>" + "\n".join((*self.reasoning, *conclusion)) + f"</think>\n<answer>{self.answer_letter}</answer>"
        )


#: Decimals of the locations, vectors and distances (metres) the reasoning states (``synthetic.cot_decimals``), set
#: for one generation by ``generate``; unit directions and cosines always keep 2 (0 decimals would erase them).
COT_DECIMALS: contextvars.ContextVar[int] = contextvars.ContextVar("cot_decimals", default=2)
UNIT_DECIMALS = 2


def fmt_num(x: float, decimals: int | None = None) -> str:
    places = COT_DECIMALS.get() if decimals is None else decimals
    return f"{float(x) + 0.0:.{places}f}"


def fmt_vec(v: np.ndarray, decimals: int | None = None) -> str:
    return "(" + ", ".join(fmt_num(x, decimals) for x in v) + ")"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, cosine(a, b)))))


def _the(o: Object3D) -> str:
    return f"the {o.name}"


def say_location(o: Object3D) -> str:
    return f"The 3D location of {_the(o)} is {fmt_vec(o.location)}."


def say_dist_camera(o: Object3D) -> str:
    return f"The distance from {_the(o)} to the camera is {fmt_num(np.linalg.norm(o.location))}."


def say_dist_between(a: Object3D, b: Object3D) -> str:
    return f"The distance between {_the(a)} and {_the(b)} is {fmt_num(np.linalg.norm(b.location - a.location))}."


def say_vector(a_name: str, b_name: str, v: np.ndarray) -> str:
    return f"The vector from {a_name} to {b_name} is {fmt_vec(v)}."


def say_front(o: Object3D) -> str:
    return f"The front direction of {_the(o)} is {fmt_vec(o.front, UNIT_DECIMALS)}."


def say_left(o: Object3D) -> str:
    return f"The left direction of {_the(o)} is {fmt_vec(o.left, UNIT_DECIMALS)}."


def say_cosine(a_desc: str, b_desc: str, c: float) -> str:
    return f"The cosine similarity between {a_desc} and {b_desc} is {fmt_num(c, UNIT_DECIMALS)}."


def _quadrant(cos_front: float, cos_left: float) -> int | None:
    if abs(cos_front) < QUADRANT_MARGIN or abs(cos_left) < QUADRANT_MARGIN:
        return None
    return (0 if cos_front > 0 else 2) + (0 if cos_left > 0 else 1)


# Each builder maps an ordered tuple of objects to a Question, or None when the answer would be ambiguous.
Builder = Callable[[Scene, tuple[Object3D, ...]], "Question | None"]


def _height_higher(scene, objs):
    a, b = objs
    if abs(a.center[1] - b.center[1]) < HEIGHT_MARGIN:
        return None
    winner = a if a.center[1] > b.center[1] else b
    reasoning = (say_location(a), say_location(b), f"The larger y coordinate (up) belongs to {_the(winner)}.")
    q = f"Which object is higher in the 3D world space, {_the(a)} or {_the(b)}?"
    return Question("height_higher", q, (a.name, b.name), 0 if winner is a else 1, reasoning, (a.name, b.name))


def _location_above(scene, objs):
    a, b = objs
    dy = a.center[1] - b.center[1]
    if abs(dy) < HEIGHT_MARGIN:
        return None
    reasoning = (
        say_location(a),
        say_location(b),
        f"The y coordinate (up) of {_the(a)} is {'larger' if dy > 0 else 'smaller'} than that of {_the(b)}.",
    )
    q = f"Consider the real-world 3D locations of the objects. Is {_the(a)} above {_the(b)}?"
    return Question("location_above", q, YES_NO, 0 if dy > 0 else 1, reasoning, (a.name, b.name))


def _location_closer_to_camera(scene, objs):
    a, b = objs
    da, db = np.linalg.norm(a.location), np.linalg.norm(b.location)
    if abs(da - db) < DEPTH_MARGIN:
        return None
    winner = a if da < db else b
    reasoning = (say_location(a), say_location(b), say_dist_camera(a), say_dist_camera(b))
    reasoning += (f"The smaller distance belongs to {_the(winner)}.",)
    q = f"Which object is closer to the camera, {_the(a)} or {_the(b)}?"
    return Question(
        "location_closer_to_camera", q, (a.name, b.name), 0 if winner is a else 1, reasoning, (a.name, b.name)
    )


def _location_next_to(scene, objs):
    a, b = objs
    d = float(np.linalg.norm(a.location - b.location))
    if NEXT_TO_MAX < d < NOT_NEXT_TO_MIN:
        return None
    near = d <= NEXT_TO_MAX
    reasoning = (
        say_location(a),
        say_location(b),
        say_dist_between(a, b),
        f"Objects within {NEXT_TO_MAX:.1f} meters count as next to each other, so they are{'' if near else ' not'}.",
    )
    q = f"Consider the real-world 3D locations of the objects. Is {_the(a)} next to {_the(b)}?"
    return Question("location_next_to", q, YES_NO, 0 if near else 1, reasoning, (a.name, b.name))


def _relative_side(category: str, direction: str):
    """Is ``a`` in front of / on the left of ``b``, judged in ``b``'s own frame."""

    def build(scene, objs):
        a, b = objs
        v = a.location - b.location
        axis = b.front if direction == "front" else b.left
        c = cosine(v, axis)
        if abs(c) < COSINE_MARGIN:
            return None
        said_axis = say_front(b) if direction == "front" else say_left(b)
        axis_desc = f"the {direction} direction" if direction == "front" else "the left direction"
        reasoning = (
            say_location(a),
            say_location(b),
            say_vector(_the(b), _the(a), v),
            said_axis,
            say_cosine(f"{_the(b)}'s {axis_desc.removeprefix('the ')}", "that vector", c),
            f"The cosine is {'positive' if c > 0 else 'negative'}.",
        )
        if direction == "front":
            q = f"Consider the real-world 3D orientations of the objects. Is {_the(a)} in front of {_the(b)}?"
        else:
            q = f"Consider the real-world 3D orientations of the objects. Is {_the(a)} on the left side of {_the(b)}?"
        return Question(category, q, YES_NO, 0 if c > 0 else 1, reasoning, (a.name, b.name))

    return build


def _orientation_viewpoint(scene, objs):
    (a,) = objs
    v = -a.location  # from the object to the camera at the origin
    cf, cl = cosine(v, a.front), cosine(v, a.left)
    quadrant = _quadrant(cf, cl)
    if quadrant is None:
        return None
    reasoning = (
        say_location(a),
        say_vector(_the(a), "the camera", v),
        say_front(a),
        say_cosine(f"{_the(a)}'s front direction", "that vector", cf),
        say_left(a),
        say_cosine(f"{_the(a)}'s left direction", "that vector", cl),
        f"So the camera is on the {'front' if cf > 0 else 'back'} {'left' if cl > 0 else 'right'} of {_the(a)}.",
    )
    q = f"From the viewpoint of {_the(a)}, is the camera on its front left, front right, back left, or back right?"
    return Question("orientation_viewpoint", q, QUADRANTS, quadrant, reasoning, (a.name,))


def _closer_to(category: str):
    def build(scene, objs):
        ref, a, b = objs
        da, db = np.linalg.norm(a.location - ref.location), np.linalg.norm(b.location - ref.location)
        if abs(da - db) < DEPTH_MARGIN:
            return None
        winner = a if da < db else b
        if category == "Distance":
            q = (
                "Estimate the real-world distances between objects in this image. "
                f"Which object is closer to {_the(ref)}, {_the(a)} or {_the(b)}?"
            )
        else:
            q = f"Which object is closer to {_the(ref)}, {_the(a)} or {_the(b)}?"
        reasoning = (
            say_location(ref),
            say_location(a),
            say_location(b),
            say_dist_between(ref, a),
            say_dist_between(ref, b),
            f"The smaller distance belongs to {_the(winner)}.",
        )
        return Question(category, q, (a.name, b.name), 0 if winner is a else 1, reasoning, (ref.name, a.name, b.name))

    return build


def _facing(scene, objs):
    ref, a, b = objs
    va, vb = a.location - ref.location, b.location - ref.location
    ca, cb = cosine(ref.front, va), cosine(ref.front, vb)
    if abs(ca - cb) < COSINE_MARGIN or max(ca, cb) < COSINE_MARGIN:
        return None
    winner = a if ca > cb else b
    reasoning = (
        say_location(ref),
        say_location(a),
        say_location(b),
        say_front(ref),
        say_vector(_the(ref), _the(a), va),
        say_cosine(f"{_the(ref)}'s front direction", "the first vector", ca),
        say_vector(_the(ref), _the(b), vb),
        say_cosine(f"{_the(ref)}'s front direction", "the second vector", cb),
        f"The larger cosine similarity points to {_the(winner)}.",
    )
    q = f"Which object is {_the(ref)} facing towards, {_the(a)} or {_the(b)}?"
    return Question(
        "multi_object_facing", q, (a.name, b.name), 0 if winner is a else 1, reasoning, (ref.name, a.name, b.name)
    )


def _viewpoint_towards_object(scene, objs):
    a, b = objs
    v = b.location - a.location
    cf, cl = cosine(v, a.front), cosine(v, a.left)
    quadrant = _quadrant(cf, cl)
    if quadrant is None:
        return None
    reasoning = (
        say_location(a),
        say_location(b),
        say_vector(_the(a), _the(b), v),
        say_front(a),
        say_cosine(f"{_the(a)}'s front direction", "that vector", cf),
        say_left(a),
        say_cosine(f"{_the(a)}'s left direction", "that vector", cl),
        f"So {_the(b)} is on the {'front' if cf > 0 else 'back'} {'left' if cl > 0 else 'right'}.",
    )
    q = (
        f"Imagine standing at {_the(a)} and facing the way it faces. "
        f"Is {_the(b)} on your front left, front right, back left, or back right?"
    )
    return Question("multi_object_viewpoint_towards_object", q, QUADRANTS, quadrant, reasoning, (a.name, b.name))


def _alignment(category: str):
    def build(scene, objs):
        a, b = objs
        theta = angle_deg(a.front, b.front)
        measure = min(theta, 180.0 - theta) if category == "multi_object_parallel" else theta
        if ALIGNED_MAX_DEG < measure < NOT_ALIGNED_MIN_DEG:
            return None
        aligned = measure <= ALIGNED_MAX_DEG
        rule = (
            "Directions within 20 degrees of each other or of opposite count as parallel"
            if category == "multi_object_parallel"
            else "Directions within 20 degrees of each other count as the same"
        )
        reasoning = (
            say_front(a),
            say_front(b),
            f"The angle between the front directions of {_the(a)} and {_the(b)} is {round(theta)} degrees.",
            f"{rule}, so the answer is {'yes' if aligned else 'no'}.",
        )
        if category == "multi_object_parallel":
            q = f"Are {_the(a)} and {_the(b)} facing parallel directions (the same or opposite)?"
        else:
            q = f"Are {_the(a)} and {_the(b)} facing the same direction?"
        return Question(category, q, YES_NO, 0 if aligned else 1, reasoning, (a.name, b.name))

    return build


def _depth(scene, objs):
    a, b = objs
    za, zb = a.center[2], b.center[2]
    if abs(za - zb) < DEPTH_MARGIN or abs(np.linalg.norm(a.location) - np.linalg.norm(b.location)) < DEPTH_MARGIN:
        return None
    winner = a if za < zb else b
    reasoning = (say_location(a), say_location(b), say_dist_camera(a), say_dist_camera(b))
    q = f"Which object is closer to the camera taking this photo, {_the(a)} or {_the(b)}?"
    return Question("Depth", q, (a.name, b.name), 0 if winner is a else 1, reasoning, (a.name, b.name))


# category -> (number of objects involved, builder)
BUILDERS: dict[str, tuple[int, Builder]] = {
    "height_higher": (2, _height_higher),
    "location_above": (2, _location_above),
    "location_closer_to_camera": (2, _location_closer_to_camera),
    "location_next_to": (2, _location_next_to),
    "orientation_in_front_of": (2, _relative_side("orientation_in_front_of", "front")),
    "orientation_on_the_left": (2, _relative_side("orientation_on_the_left", "left")),
    "orientation_viewpoint": (1, _orientation_viewpoint),
    "multi_object_closer_to": (3, _closer_to("multi_object_closer_to")),
    "multi_object_facing": (3, _facing),
    "multi_object_viewpoint_towards_object": (2, _viewpoint_towards_object),
    "multi_object_parallel": (2, _alignment("multi_object_parallel")),
    "multi_object_same_direction": (2, _alignment("multi_object_same_direction")),
    "Depth": (2, _depth),
    "Distance": (3, _closer_to("Distance")),
}


def candidates(scene: Scene, category: str) -> Iterator[Question]:
    """Every unambiguous question of ``category`` about ``scene`` (all ordered choices of objects)."""
    arity, build = BUILDERS[category]
    for objs in itertools.permutations(scene.objects, arity):
        q = build(scene, objs)
        if q is not None:
            yield q


def ask(scene: Scene, category: str, rng: np.random.Generator) -> Question | None:
    """One question of ``category``, with its answer drawn uniformly among the answers the scene allows."""
    if category not in BUILDERS:
        raise KeyError(f"unknown question category {category!r}; known: {', '.join(BUILDERS)}")
    by_answer: dict[str, list[Question]] = {}
    for q in candidates(scene, category):
        # balance on the answer's text for fixed option sets (yes/no, quadrants), on position otherwise
        key = q.options[q.answer] if q.options in (YES_NO, QUADRANTS) else str(q.answer)
        by_answer.setdefault(key, []).append(q)
    if not by_answer:
        return None
    keys = sorted(by_answer)
    pool = by_answer[keys[int(rng.integers(len(keys)))]]
    return pool[int(rng.integers(len(pool)))]
