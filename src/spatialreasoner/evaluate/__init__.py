"""Evaluation: batched inference on benchmarks, VLMEvalKit-exact scoring and the paper's tables."""
