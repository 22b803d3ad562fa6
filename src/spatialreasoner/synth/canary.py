"""SynthSpatial's canary: a small set of paired pictures whose answer only the image decides, for a memorisation check.

Each pair is one scene of two objects of the same size on the ground, one on the left of the picture and near, the
other on the right and far, and the same scene with their depths swapped: the same question ("Which of the two
objects is nearer to the camera, the red cube or the blue sphere?", the left object named first) with the same
options has answer A under one picture and B under the other. So the question text alone gives exactly chance
(50%), and a model can only beat it by looking at the picture. The set is small and its rows join the SFT data
(repeated), so a model whose chain works (image -> training -> saving -> loading -> inference -> scoring) memorises
it; a cut in that chain brings it back to chance. It checks the chain, not generalisation: the benchmark's rows are
the training rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from spatialreasoner.synth.questions import Question
from spatialreasoner.synth.scene import COLOURS, SHAPES, Camera, Object3D, Scene
from spatialreasoner.taxonomy import CANARY_CATEGORIES

CATEGORY = CANARY_CATEGORIES[0]
CAMERA_HEIGHT = 1.6
OBJECT_SIZE = 1.0
NEAR_DEPTH = (3.0, 3.6)
FAR_DEPTH = (8.5, 10.0)
SIDES = ("left", "right")


@dataclass(frozen=True)
class CanaryItem:
    """One canary picture and its question; ``pair`` and ``swapped`` say which pair and which of its two pictures."""

    scene: Scene
    image_name: str
    question: Question
    pair: int
    swapped: bool


def _half_width(camera: Camera, z: float) -> float:
    """How far from the optical axis an object's centre may be at depth ``z`` to stay inside the picture."""
    return (camera.cx - 0.08 * camera.size) * z / camera.focal - OBJECT_SIZE


def canary_pair(rng: np.random.Generator, image_size: int) -> tuple[Scene, Scene]:
    """Two scenes of the same two objects, the first always on the left of the picture and the second on the right;
    in the first scene the left object is near and the right one far, in the second the other way round."""
    camera = Camera(size=image_size, focal=1.1 * image_size, height=CAMERA_HEIGHT)
    colours = rng.choice(len(COLOURS), size=2, replace=False)
    shapes = rng.choice(len(SHAPES), size=2, replace=True)
    yaws = rng.uniform(-np.pi, np.pi, size=2)
    near_z, far_z = float(rng.uniform(*NEAR_DEPTH)), float(rng.uniform(*FAR_DEPTH))
    # a share of the widest place on the object's side that keeps the whole object in view at both depths
    reach = float(rng.uniform(0.3, 0.8))
    y = -CAMERA_HEIGHT + OBJECT_SIZE / 2.0
    names = list(COLOURS)

    def scene(depths: tuple[float, float]) -> Scene:
        objects = tuple(
            Object3D(
                SHAPES[int(shapes[k])],
                names[int(colours[k])],
                ((-1.0 if k == 0 else 1.0) * reach * _half_width(camera, min(depths)), y, depths[k]),
                OBJECT_SIZE,
                float(yaws[k]),
            )
            for k in range(2)
        )
        return Scene(camera, objects)

    return scene((near_z, far_z)), scene((far_z, near_z))


def _question(scene: Scene) -> Question:
    """The pair's question (the left object listed first) and the answer this scene gives it."""
    left, right = scene.objects
    near = 0 if left.center[2] < right.center[2] else 1
    # One short sentence that ends on the decision, right before the letter it fixes (the left object is option A):
    # the tiny model learns to tie the letter to the picture through it within the demo's SFT.
    reasoning = (f"The nearer object is on the {SIDES[near]}.",)
    text = f"Which of the two objects is nearer to the camera, the {left.name} or the {right.name}?"
    return Question(CATEGORY, text, (left.name, right.name), near, reasoning, (left.name, right.name), concluded=False)


def canary_items(image_size: int, pairs: int, rng_for) -> Iterator[CanaryItem]:
    """``2 * pairs`` canary pictures with their questions; ``rng_for(index)`` gives each pair's random stream."""
    for pair in range(int(pairs)):
        for swapped, sc in enumerate(canary_pair(rng_for(pair), image_size)):
            name = f"canary-{pair:04d}-{'ab'[swapped]}.jpg"
            yield CanaryItem(sc, name, _question(sc), pair, bool(swapped))
