"""The benchmarks the workflow knows and their question categories: one definition for data, scoring and tables.

Order matters: it is the column order of the paper's tables.
"""

SRB = "3DSRBench"
CVB = "CV-Bench-3D"
#: SynthSpatial's canary (spatialreasoner.synth.canary): a memorisation check of the chain, scored per question.
CANARY = "Canary"
BENCHMARKS = (SRB, CVB, CANARY)

#: 3DSRBench question types and their subtypes (the ``category`` column), in the paper's table order.
SRB_TYPES: dict[str, tuple[str, ...]] = {
    "height": ("height_higher",),
    "location": ("location_above", "location_closer_to_camera", "location_next_to"),
    "orientation": ("orientation_in_front_of", "orientation_on_the_left", "orientation_viewpoint"),
    "multi_object": (
        "multi_object_closer_to",
        "multi_object_facing",
        "multi_object_viewpoint_towards_object",
        "multi_object_parallel",
        "multi_object_same_direction",
    ),
}
SRB_SUBTYPES: tuple[str, ...] = tuple(s for subs in SRB_TYPES.values() for s in subs)
#: CV-Bench-3D's categories.
CVB_CATEGORIES: tuple[str, ...] = ("Depth", "Distance")
#: The canary's one category.
CANARY_CATEGORIES: tuple[str, ...] = ("nearer_object",)
