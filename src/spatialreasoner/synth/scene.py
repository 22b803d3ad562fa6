"""SynthSpatial scenes: a pinhole camera over a ground plane and objects with exact 3D ground truth.

Coordinates are the camera's, in metres: x to the right, y up, z forward (into the picture); the camera sits at
the origin looking along +z, so the ground plane is ``y = -camera_height``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

SHAPES = ("cube", "sphere", "cylinder", "cone")
# name -> RGB; names are what questions call the objects ("the red cube").
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 210),
    "yellow": (225, 200, 40),
    "purple": (130, 50, 170),
    "orange": (235, 130, 30),
    "cyan": (40, 190, 200),
    "brown": (120, 75, 40),
}


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics for a square image of ``size`` pixels, optical axis level with the ground.

    The principal point is centred horizontally (so a mirrored scene renders as the flipped image) and shifted up
    (a lens shift, not a tilt) so that the ground fills most of the picture while the axes stay simple.
    """

    size: int
    focal: float
    height: float = 1.6
    horizon: float = 0.3  # principal point row as a fraction of the image height

    @property
    def cx(self) -> float:
        return self.size / 2.0

    @property
    def cy(self) -> float:
        return self.horizon * self.size

    def project(self, points: np.ndarray) -> np.ndarray:
        """Pixel (u, v) of camera-frame points ``(..., 3)``; v grows downwards as in images."""
        points = np.asarray(points, dtype=float)
        z = points[..., 2]
        u = self.cx + self.focal * points[..., 0] / z
        v = self.cy - self.focal * points[..., 1] / z
        return np.stack([u, v], axis=-1)


@dataclass(frozen=True)
class Object3D:
    """One object: ``center`` is the 3D location questions talk about; ``yaw`` turns its front about +y."""

    shape: str
    colour: str
    center: tuple[float, float, float]
    size: float
    yaw: float  # radians; front = (sin(yaw), 0, cos(yaw)), i.e. yaw 0 faces away from the camera

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def location(self) -> np.ndarray:
        return np.asarray(self.center, dtype=float)

    @property
    def front(self) -> np.ndarray:
        return np.array([math.sin(self.yaw), 0.0, math.cos(self.yaw)])

    @property
    def left(self) -> np.ndarray:
        """The object's own left: for the camera's pose (front +z) this is -x."""
        f = self.front
        return np.array([-f[2], 0.0, f[0]])

    @property
    def bottom(self) -> float:
        return self.center[1] - self.size / 2.0


@dataclass(frozen=True)
class Scene:
    camera: Camera
    objects: tuple[Object3D, ...]
    mirrored: bool = False

    def by_name(self, name: str) -> Object3D:
        for obj in self.objects:
            if obj.name == name:
                return obj
        raise KeyError(name)


def mirror(scene: Scene) -> Scene:
    """The scene reflected in the plane x = 0: its image is the horizontal flip of the original's."""
    objects = tuple(replace(o, center=(-o.center[0], o.center[1], o.center[2]), yaw=-o.yaw) for o in scene.objects)
    return replace(scene, objects=objects, mirrored=not scene.mirrored)


def sample_scene(
    rng: np.random.Generator,
    image_size: int,
    n_objects: tuple[int, int] = (3, 5),
    depth_range: tuple[float, float] = (3.0, 10.0),
    focal_ratio: float = 1.1,
    camera_height: float = 1.6,
    float_prob: float = 0.25,
    aligned_prob: float = 0.35,
) -> Scene:
    """Objects of distinct colours resting on (or floating above) the ground, inside the view, not intersecting.

    ``aligned_prob``: chance that an object copies another's yaw (or its opposite) so that the parallel and
    same-direction questions get both answers.
    """
    camera = Camera(size=image_size, focal=focal_ratio * image_size, height=camera_height)
    count = int(rng.integers(n_objects[0], n_objects[1] + 1))
    colours = rng.permutation(len(COLOURS))[:count]
    colour_names = list(COLOURS)
    objects: list[Object3D] = []
    attempts = 0
    while len(objects) < count and attempts < 200:
        attempts += 1
        size = float(rng.uniform(0.5, 1.3))
        z = float(rng.uniform(*depth_range))
        # keep the whole object inside the horizontal field of view, with a margin
        half_width = (camera.cx - 0.08 * image_size) * z / camera.focal - size
        if half_width <= 0:
            continue
        x = float(rng.uniform(-half_width, half_width))
        lift = float(rng.uniform(0.3, 1.4)) if rng.random() < float_prob else 0.0
        y = -camera_height + size / 2.0 + lift
        if any(math.hypot(x - o.center[0], z - o.center[2]) < 0.6 * (size + o.size) + 0.3 for o in objects):
            continue
        yaw = float(rng.uniform(-math.pi, math.pi))
        if objects and rng.random() < aligned_prob:
            other = objects[int(rng.integers(len(objects)))]
            yaw = other.yaw + (math.pi if rng.random() < 0.5 else 0.0) + float(rng.normal(0.0, 0.08))
            yaw = math.atan2(math.sin(yaw), math.cos(yaw))
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        objects.append(Object3D(shape, colour_names[colours[len(objects)]], (x, y, z), size, yaw))
    return Scene(camera=camera, objects=tuple(objects))
