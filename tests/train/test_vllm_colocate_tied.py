"""The colocated sync pushes a tied LM head under its own name too: vLLM's CPU model keeps it as a separate repacked
weight, so the engine would otherwise go on computing logits with the starting head."""

from __future__ import annotations

import torch

from spatialreasoner.train.vllm_colocate import _weights_with_tied_copies, tied_names


class FakeGeneration:
    """What the sync reads of TRL's VLLMGeneration: the model, its name fixing and its parameter iteration."""

    def __init__(self, model):
        self.model = model

    def _fix_param_name_to_vllm(self, name):
        return name.replace("_checkpoint_wrapped_module.", "")

    def _iter_named_params(self):
        for name, param in self.model.named_parameters():
            yield self._fix_param_name_to_vllm(name), param.data


def test_tiny_model_ties_its_head_to_the_input_embedding(tiny_model_dir):
    from spatialreasoner.modeling import load_model

    model = load_model(tiny_model_dir, dtype="float32", attn_implementation="sdpa")
    tied = tied_names(model)
    embedding = next(name for name, p in model.named_parameters() if p is model.get_input_embeddings().weight)
    assert tied == {embedding: ["lm_head.weight"]}
    assert "lm_head.weight" not in dict(model.named_parameters())  # what TRL iterates leaves it out


def test_sync_yields_every_name_of_the_state_dict_with_its_values(tiny_model_dir):
    from spatialreasoner.modeling import load_model

    model = load_model(tiny_model_dir, dtype="float32", attn_implementation="sdpa")
    pushed = dict(_weights_with_tied_copies(FakeGeneration(model)))
    state = model.state_dict()
    assert set(pushed) == set(state)
    for name, tensor in state.items():
        assert torch.equal(pushed[name], tensor), name
        assert pushed[name].data_ptr() != tensor.data_ptr(), f"{name}: vLLM gets a copy, not the live parameter"


def test_untied_model_pushes_each_parameter_once():
    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5))
    pushed = [name for name, _ in _weights_with_tied_copies(FakeGeneration(model))]
    assert pushed == [name for name, _ in model.named_parameters()]
    assert tied_names(model) == {}
