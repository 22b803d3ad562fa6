"""Training stages of SpatialReasoner: SFT and GRPO on TRL's trainers, rewards, schedule and checkpoint handling.

``spatialreasoner train`` (``main.py``) runs one configured run; the other modules are importable on their own.
"""
