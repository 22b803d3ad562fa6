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

TRL hands the engine the trainer's prompt token ids, in which the processor has already expanded each image into
its run of image tokens, together with the image itself; vLLM expands the image placeholder of a token prompt
again, so the first image token became a second run and the rest stayed as text: the engine sampled from another
prompt than the one trained on, and its log-probabilities (vLLM's importance-sampling correction) disagreed with
the trainer's. The engine therefore gets each run collapsed to the single placeholder the chat template writes, and
the prompt it expanded is checked to be the trainer's, token for token.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from spatialreasoner.errors import DataError

log = logging.getLogger(__name__)


def single_process_rendezvous() -> None:
    """Give a run started without a launcher its own ``MASTER_PORT`` for the engine's one-process group.

    The colocated engine sets up torch.distributed even in one process; launchers (accelerate, torchrun, DeepSpeed)
    set ``MASTER_PORT`` themselves. Without one, TRL takes the first free port of a fixed list (29500 first), so two
    such runs starting together on one machine both pick 29500 and the second fails with EADDRINUSE. A port the
    system hands out (bind to port 0) avoids that. An explicit ``MASTER_PORT`` is kept."""
    if os.environ.get("MASTER_PORT", "").strip().lower() not in ("", "0", "auto"):
        return
    if int(os.environ.get("WORLD_SIZE") or 1) > 1:  # every rank must find one port: the launcher's to choose
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["MASTER_ADDR"] = os.environ.get("MASTER_ADDR") or "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    log.info("colocated vLLM: one-process group on port %d", port)


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


def tied_names(model) -> dict[str, list[str]]:
    """For each parameter ``named_parameters()`` yields, the other names it is tied to (``lm_head.weight`` of a model
    with tied word embeddings), which ``named_parameters()`` leaves out."""
    first, tied = {}, {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            tied.setdefault(first[id(param)], []).append(name)
        else:
            first[id(param)] = name
    return tied


def _weights_with_tied_copies(generation) -> Iterator[tuple[str, object]]:
    """TRL's weights for vLLM (each parameter once), with each tied parameter also under its other names.

    A vLLM model on the CPU keeps a tied LM head as its own repacked GEMM weight, so reloading only the input
    embedding would leave the LM head at the weights the engine started with."""
    fix = generation._fix_param_name_to_vllm
    tied = {fix(name): [fix(other) for other in others] for name, others in tied_names(generation.model).items()}
    # A gathered (ZeRO-3) parameter is only whole inside TRL's iteration; vLLM may hold it until its layer is
    # complete, so it gets a copy.
    for name, tensor in generation._iter_named_params():
        copy = tensor.detach().clone()
        yield name, copy
        for other in tied.get(name, ()):
            yield other, copy


def reload_colocated_weights(generation) -> None:
    """Push the trainer's current weights into TRL's colocated engine (``generation``: TRL's VLLMGeneration)."""
    llm = generation.llm
    runner = llm.llm_engine.model_executor.driver_worker.model_runner
    runner.reload_weights(weights_iterator=_weights_with_tied_copies(generation), is_checkpoint_format=True)
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


def collapse_image_runs(ids, image_token_id: int) -> list[int]:
    """``ids`` with each run of image tokens shortened to one, the placeholder that vLLM expands itself."""
    out: list[int] = []
    for token in ids:
        token = int(token)
        if not (token == image_token_id and out and out[-1] == image_token_id):
            out.append(token)
    return out


def feed_unexpanded_image_prompts(trainer) -> None:
    """Make ``trainer``'s colocated engine (TRL's VLLMGeneration) generate from the trainer's prompts: each prompt
    goes in with its image runs collapsed, and the prompt vLLM made of it by expanding the image must be the
    trainer's, else a DataError (the engine's image processor resized the image differently)."""
    generation = getattr(trainer, "vllm_generation", None)
    if generation is None or generation.mode != "colocate":
        return
    image_token_id = int(trainer.processing_class.image_token_id)
    generate = generation.generate

    def generate_from_placeholders(prompts, images, num_generations, profiler=None):
        if images is None:
            return generate(prompts=prompts, images=images, num_generations=num_generations, profiler=profiler)
        sent = [collapse_image_runs(ids, image_token_id) for ids in prompts]
        prompt_ids, *rest = generate(prompts=sent, images=images, num_generations=num_generations, profiler=profiler)
        for i, (made, meant) in enumerate(zip(prompt_ids, prompts, strict=True)):
            if list(made) != [int(t) for t in meant]:
                counts = [sum(int(t) == image_token_id for t in ids) for ids in (made, meant)]
                raise DataError(
                    f"colocated vLLM: prompt {i} of this batch became {len(made)} tokens with {counts[0]} image "
                    f"tokens in the engine, but the trainer's processor made {len(meant)} tokens with {counts[1]}; "
                    "the engine's image processor must resize images as the trainer's does (the run's pixel limits)"
                )
        return (prompt_ids, *rest)

    generation.generate = generate_from_placeholders
    log.info("colocated vLLM: image prompts are sent with one placeholder per image and checked after expansion")
