"""``spatialreasoner gpu-check``: the training and inference paths at the paper's shapes on one GPU, timed.

One module per stage (``models``, ``sft``, ``grpo``, ``inference``), each run in a process of its own by ``main``;
``table`` collects their rows. ``--tiny`` runs every stage on a CPU with the tiny model.
"""
