"""GRPO's colocated vLLM engine: started with the run's pixel limits, and synced through vLLM's own reload
(``reload_weights``) instead of TRL's direct ``model.load_weights`` calls.

TRL sends the engine prompt token ids made by the trainer's processor together with the images, so the engine's
image processor must use the same pixel limits, or the image placeholders do not match its image tokens; TRL's
``LLM(...)`` call has no argument for them, so they are added to it while the trainer is built.

On the CPU, vLLM repacks every linear layer's weight for its GEMM kernels after loading and replaces
``layer.weight`` by an empty parameter without the ``weight_loader`` attribute that ``load_weights`` needs (vLLM's
``dispatch_cpu_unquantized_gemm``), so TRL's sync fails at the first linear layer. ``reload_weights`` restores
each layer's loadable parameters, loads the new weights and repeats the repacking, on every platform. After it,
the encoder (vision embedding) and multimodal caches are cleared too: they are keyed by the image alone, so a
prompt whose image was seen before the update would otherwise reuse embeddings of the old vision tower.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


def engine_pixel_limits(processor) -> dict:
    """``mm_processor_kwargs`` giving vLLM's image processor the trainer processor's pixel limits."""
    size = processor.image_processor.size
    return {"min_pixels": int(size["shortest_edge"]), "max_pixels": int(size["longest_edge"])}


@contextmanager
def colocated_engine_arguments(**extra) -> Iterator[None]:
    """While the trainer is built, TRL's colocated ``vllm.LLM(...)`` also gets ``extra`` keyword arguments."""
    import trl.generation.vllm_generation as generation

    original = generation.LLM

    def make_llm(*args, **kwargs):
        return original(*args, **{**kwargs, **extra})

    generation.LLM = make_llm
    try:
        yield
    finally:
        generation.LLM = original


def reload_colocated_weights(generation) -> None:
    """Push the trainer's current weights into TRL's colocated engine (``generation``: TRL's VLLMGeneration)."""
    llm = generation.llm
    runner = llm.llm_engine.model_executor.driver_worker.model_runner
    # A gathered (ZeRO-3) parameter is only whole inside TRL's iteration; vLLM may hold it until its layer is
    # complete, so it gets a copy.
    weights = ((name, tensor.detach().clone()) for name, tensor in generation._iter_named_params())
    runner.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
    llm.reset_prefix_cache()
    llm.llm_engine.reset_encoder_cache()
    llm.reset_mm_cache()


def use_reload_for_colocated_sync(trainer) -> None:
    """Make ``trainer`` (a TRL GRPOTrainer) sync its colocated vLLM engine with :func:`reload_colocated_weights`."""
    generation = getattr(trainer, "vllm_generation", None)
    if generation is None or generation.mode != "colocate":
        return

    def sync_weights() -> None:
        if generation.enable_sleep_mode:  # as TRL: map the weights' memory again before writing to it
            generation.llm.wake_up(tags=["weights"])
            generation._llm_weights_sleeping = False
        reload_colocated_weights(generation)

    generation.sync_weights = sync_weights
    log.info("colocated vLLM: weights are synced through vLLM's reload_weights")
