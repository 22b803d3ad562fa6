"""SynthSpatial throughput: scenes per second on one core (sample + render + JPEG encode), and full generation.

Usage: python benchmarks/bench_synth.py [--size 112] [--scenes 2000]. Target: at least 100 scenes/s at the demo size.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from spatialreasoner.synth.generate import generate
from spatialreasoner.synth.questions import SUBTYPES_3DSRBENCH, ask
from spatialreasoner.synth.render import encode_jpeg, render
from spatialreasoner.synth.scene import sample_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=112, help="image side in pixels (demo: 112)")
    parser.add_argument("--scenes", type=int, default=2000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core

    t0 = time.perf_counter()
    for i in range(args.scenes):
        rng = np.random.default_rng([0, i])
        scene = sample_scene(rng, args.size)
        encode_jpeg(render(scene))
        ask(scene, SUBTYPES_3DSRBENCH[i % len(SUBTYPES_3DSRBENCH)], rng)
    dt = time.perf_counter() - t0
    print(
        f"scenes (sample + render + jpeg + one question) at {args.size}px: {args.scenes / dt:.0f} scenes/s on one core"
    )

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        counts = generate(out, {"image_size": args.size})
        dt = time.perf_counter() - t0
    rate = counts["scenes"] / dt
    print(f"full demo generation ({counts['scenes']} scenes, all outputs): {dt:.2f} s = {rate:.0f} scenes/s")


if __name__ == "__main__":
    main()
