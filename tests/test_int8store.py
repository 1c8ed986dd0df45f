"""The int8 copies of a model's weights, kept on disk (worker.engine.int8store)."""

from __future__ import annotations

import torch
from transformers import Qwen2ForCausalLM

from tests.test_paths import tiny_config
from worker.engine import kernels
from worker.engine.int8store import Int8Store, file_for, per_channel_int8
from worker.engine.kernels import FBGEMM, FLOAT32, decoding


def _outputs(model, ids):
    with torch.inference_mode():
        scored = model(ids).logits
        with decoding():
            decoded = model(ids).logits
    return scored, decoded


def test_saved_copies_give_the_same_model_without_reading_its_int8_layers_float_weights(tmp_path):
    torch.manual_seed(0)
    depth, edge = 2 * kernels.SCORE_FLOAT_LAYERS + 2, kernels.SCORE_FLOAT_LAYERS
    original = Qwen2ForCausalLM(tiny_config(depth)).eval()
    ids = torch.randint(0, original.config.vocab_size, (2, 7))
    file = tmp_path / "int8.safetensors"
    first, second = (Qwen2ForCausalLM(tiny_config(depth)).eval() for _ in range(2))
    for model in (first, second):
        model.load_state_dict(original.state_dict())
    store = Int8Store(file)
    kernels.apply(first, FLOAT32, FBGEMM, FBGEMM, store)
    store.save()
    assert file.is_file() and len(store.new) == depth * 4 + 1  # q+k+v, o, gate+up, down a layer, and the head
    edges = [f"layers.{i}." for i in [*range(edge), *range(depth - edge, depth)]]
    with torch.no_grad():  # the middle layers run int8 in both phases: their float weights must never be read
        for name, module in second.model.layers.named_modules(prefix="layers"):
            if isinstance(module, torch.nn.Linear) and not any(e in f"{name}." for e in edges):
                module.weight.fill_(float("nan"))
    again = Int8Store(file)
    kernels.apply(second, FLOAT32, FBGEMM, FBGEMM, again)
    assert not again.new  # all read from the file
    for a, b in zip(_outputs(first, ids), _outputs(second, ids), strict=True):
        assert torch.equal(a, b)


def test_a_damaged_file_or_a_changed_shape_is_computed_again(tmp_path, caplog):
    file, w = tmp_path / "int8.safetensors", torch.randn(4, 8)
    store = Int8Store(file)
    store.get("layer", (4, 8), lambda: w)
    store.save()
    wider = torch.randn(6, 8)
    q, scale = Int8Store(file).get("layer", (6, 8), lambda: wider)  # the model changed under the same name
    assert torch.equal(q, per_channel_int8(wider)[0]) and scale.shape == (6,)
    file.write_bytes(b"not safetensors")
    damaged = Int8Store(file)
    assert damaged.saved == {} and "unreadable int8 weights" in caplog.text
    assert torch.equal(damaged.get("layer", (4, 8), lambda: w)[0], per_channel_int8(w)[0])


def test_only_weights_with_a_hash_are_kept_and_each_hash_has_its_file():
    assert file_for("/c", None) is None
    assert file_for("/c", "abc") == file_for("/c", "abc") != file_for("/c", "abd")
