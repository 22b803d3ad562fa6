"""SpatialReasoner workflow: data, training, evaluation and tables for explicit 3D spatial reasoning.

Each stage is a module exposed as a ``spatialreasoner <subcommand>``; the Snakemake workflow calls them.
"""

__version__ = "0.1.0"
