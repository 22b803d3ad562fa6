"""Perspective rendering of SynthSpatial scenes with PIL: ground, shadows, shaded solids and a front marker.

Objects are painted far to near (occlusion by depth); each object's front carries a dark pointed "nose" and cubes
also show a light front face, so orientation questions are answerable from the picture.
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np
from PIL import Image, ImageDraw

from spatialreasoner.synth.scene import COLOURS, Camera, Object3D, Scene

LIGHT = np.array([-0.45, 0.8, -0.4]) / np.linalg.norm([-0.45, 0.8, -0.4])
SKY = (178, 204, 230)
GROUND_NEAR = (118, 112, 100)
GROUND_FAR = (168, 162, 150)
NOSE = (25, 25, 25)
CIRCLE_SEGMENTS = 14
_UNIT_CIRCLE = np.stack(
    [np.cos(np.linspace(0, 2 * math.pi, CIRCLE_SEGMENTS, endpoint=False)),
     np.sin(np.linspace(0, 2 * math.pi, CIRCLE_SEGMENTS, endpoint=False))],
    axis=1,
)  # fmt: skip
# unit cube corners and its faces (corner indices, outward normal in object axes: right, up, front)
_CUBE = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float) / 2
_CUBE_FACES = (
    ((4, 5, 7, 6), (1, 0, 0)),
    ((0, 2, 3, 1), (-1, 0, 0)),
    ((2, 6, 7, 3), (0, 1, 0)),
    ((0, 1, 5, 4), (0, -1, 0)),
    ((1, 3, 7, 5), (0, 0, 1)),
    ((0, 4, 6, 2), (0, 0, -1)),
)


@functools.lru_cache(maxsize=8)
def _background(cam: Camera) -> bytes:
    """Sky above the horizon, a ground getting lighter with distance, and a few ground lines for perspective."""
    size, focal, height = cam.size, cam.focal, cam.height
    img = np.empty((size, size, 3), dtype=np.uint8)
    horizon = cam.cy
    rows = np.arange(size) + 0.5
    for r, v in enumerate(rows):
        if v <= horizon:
            img[r] = SKY
        else:
            depth = focal * height / (v - horizon)
            t = min(1.0, depth / 25.0)
            img[r] = [int(n + (f - n) * t) for n, f in zip(GROUND_NEAR, GROUND_FAR, strict=True)]
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    line = tuple(max(0, c - 18) for c in GROUND_NEAR)
    for x in (-6.0, -3.0, 0.0, 3.0, 6.0):
        (u0, v0), (u1, v1) = cam.project(np.array([[x, -height, 1.0], [x, -height, 60.0]]))
        draw.line([(u0, v0), (u1, v1)], fill=line, width=1)
    for z in (4.0, 8.0, 16.0):
        v = cam.project(np.array([0.0, -height, z]))[1]
        draw.line([(0, v), (size, v)], fill=line, width=1)
    return pil.tobytes()


def _shade(rgb: tuple[int, int, int], normal: np.ndarray, lift: float = 0.0) -> tuple[int, int, int]:
    k = 0.45 + 0.55 * max(0.0, float(normal @ LIGHT))
    return tuple(int(min(255, c * k + (255 - c * k) * lift)) for c in rgb)


def _rotation(obj: Object3D) -> np.ndarray:
    """Columns: the object's right, up and front axes in camera coordinates."""
    front = obj.front
    right = -obj.left
    return np.stack([right, np.array([0.0, 1.0, 0.0]), front], axis=1)


def _hull(points: np.ndarray) -> list[tuple[float, float]]:
    """Convex hull (monotone chain) of 2D points, as a polygon."""
    pts = sorted(map(tuple, points.tolist()))
    if len(pts) <= 2:
        return pts

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def _poly(points2d: np.ndarray) -> list[tuple[float, float]]:
    return [(float(u), float(v)) for u, v in points2d]


def _draw_shadow(draw: ImageDraw.ImageDraw, cam: Camera, obj: Object3D) -> None:
    x, _, z = obj.center
    r = obj.size * 0.55
    ring = np.column_stack(
        [x + r * _UNIT_CIRCLE[:, 0], np.full(CIRCLE_SEGMENTS, -cam.height), z + r * _UNIT_CIRCLE[:, 1]]
    )
    shade = 0.55 if obj.bottom - (-cam.height) < 0.05 else 0.75
    fill = tuple(int(c * shade) for c in GROUND_NEAR)
    draw.polygon(_poly(cam.project(ring)), fill=fill)


def _draw_body(draw: ImageDraw.ImageDraw, cam: Camera, obj: Object3D) -> None:
    rgb = COLOURS[obj.colour]
    c = obj.location
    rot = _rotation(obj)
    s = obj.size
    if obj.shape == "cube":
        corners = c + (_CUBE * s) @ rot.T
        uv = cam.project(corners)
        for idx, n_local in _CUBE_FACES:
            normal = rot @ np.asarray(n_local, dtype=float)
            face_center = corners[list(idx)].mean(axis=0)
            if normal @ face_center >= 0:  # faces away from the camera (which sits at the origin)
                continue
            lift = 0.45 if n_local == (0, 0, 1) else 0.0
            draw.polygon(_poly(uv[list(idx)]), fill=_shade(rgb, normal, lift), outline=_shade(rgb, normal, 0.0))
    elif obj.shape == "sphere":
        (u, v), r = cam.project(c), cam.focal * s / 2 / c[2]
        draw.ellipse([u - r, v - r, u + r, v + r], fill=_shade(rgb, np.array([0.0, 0.0, -1.0])))
        hr = r * 0.45
        hu, hv = u - r * 0.3, v - r * 0.35
        draw.ellipse([hu - hr, hv - hr, hu + hr, hv + hr], fill=_shade(rgb, LIGHT))
    else:  # cylinder or cone: silhouette = hull of the base ring (+ top ring / apex), then the top cap
        radius = s * (0.4 if obj.shape == "cylinder" else 0.5)
        ring = np.column_stack([radius * _UNIT_CIRCLE[:, 0], np.zeros(CIRCLE_SEGMENTS), radius * _UNIT_CIRCLE[:, 1]])
        base = c + ring + np.array([0.0, -s / 2, 0.0])
        if obj.shape == "cylinder":
            top = c + ring + np.array([0.0, s / 2, 0.0])
            draw.polygon(_hull(cam.project(np.vstack([base, top]))), fill=_shade(rgb, np.array([0.0, 0.3, -1.0])))
            if top[0, 1] < 0:  # the camera looks down onto the cap
                draw.polygon(_poly(cam.project(top)), fill=_shade(rgb, np.array([0.0, 1.0, 0.0]), 0.1))
        else:
            apex = c + np.array([0.0, s / 2, 0.0])
            draw.polygon(_hull(cam.project(np.vstack([base, apex]))), fill=_shade(rgb, np.array([0.0, 0.5, -1.0])))


def _nose(obj: Object3D) -> np.ndarray:
    """A small pyramid sticking out of the object's front at mid height: 4 base corners + tip."""
    s = obj.size
    reach = {"cube": 0.5, "sphere": 0.5, "cylinder": 0.4, "cone": 0.3}[obj.shape] * s
    p0 = obj.location + obj.front * reach
    w = 0.16 * s
    up = np.array([0.0, 1.0, 0.0])
    left = obj.left
    base = np.stack([p0 + left * w + up * w, p0 - left * w + up * w, p0 - left * w - up * w, p0 + left * w - up * w])
    return np.vstack([base, p0 + obj.front * 0.32 * s])


def render(scene: Scene) -> Image.Image:
    """The scene's RGB picture (painter's algorithm: farther objects first)."""
    cam = scene.camera
    img = Image.frombytes("RGB", (cam.size, cam.size), _background(cam))
    draw = ImageDraw.Draw(img)
    order = sorted(scene.objects, key=lambda o: -float(np.linalg.norm(o.location)))
    for obj in order:
        _draw_shadow(draw, cam, obj)
    for obj in order:
        nose = cam.project(_nose(obj))
        # the nose is in front of the body when the object faces the camera (camera direction = -location)
        nose_first = float(obj.front @ -obj.location) < 0
        if nose_first:
            draw.polygon(_hull(nose), fill=NOSE)
        _draw_body(draw, cam, obj)
        if not nose_first:
            draw.polygon(_hull(nose), fill=NOSE)
    return img


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
