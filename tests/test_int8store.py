"""The int8 copies of a model's weights, kept on disk (worker.engine.int8store)."""

from __future__ import annotations

import torch
from transformers import Qwen2ForCausalLM

from tests.test_paths import tiny_config
from worker.engine import int8store, kernels
from worker.engine.gemms import FBGEMM, FLOAT32
from worker.engine.int8store import Int8Store, file_for, per_channel_int8
from worker.engine.kernels import decoding


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
    assert file.is_file() and store.computed == depth * 4 + 1  # q+k+v, o, gate+up, down a layer, and the head
    edges = [f"layers.{i}." for i in [*range(edge), *range(depth - edge, depth)]]
    with torch.no_grad():  # the middle layers run int8 in both phases: their float weights must never be read
        for name, module in second.model.layers.named_modules(prefix="layers"):
            if isinstance(module, torch.nn.Linear) and not any(e in f"{name}." for e in edges):
                module.weight.fill_(float("nan"))
    again = Int8Store(file)
    kernels.apply(second, FLOAT32, FBGEMM, FBGEMM, again)
    assert again.computed == 0  # all read from the file
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
    assert damaged.saved == {} and "ignoring the unreadable" in caplog.text
    assert torch.equal(damaged.get("layer", (4, 8), lambda: w)[0], per_channel_int8(w)[0])


def test_a_file_that_cannot_be_written_costs_a_warning_not_the_start(tmp_path, caplog):
    (tmp_path / "not-a-folder").write_text("")
    store = Int8Store(tmp_path / "not-a-folder" / "int8.safetensors")
    w = torch.randn(3, 8)
    assert torch.equal(store.get("layer", (3, 8), lambda: w)[0], per_channel_int8(w)[0])
    store.save()
    assert "could not save" in caplog.text and not store.new


def test_the_head_is_quantised_in_pieces_with_the_same_result(monkeypatch):
    w = torch.randn(50, 16)
    whole = per_channel_int8(w)
    monkeypatch.setattr(int8store, "CHUNK_ROWS", 7)
    assert all(torch.equal(a, b) for a, b in zip(per_channel_int8(w), whole, strict=True))


def test_only_weights_with_a_hash_are_kept_and_each_hash_and_dtype_has_its_file():
    assert file_for("/c", None, "float32") is None
    assert file_for("/c", "abc", "float32") == file_for("/c", "abc", "float32") != file_for("/c", "abd", "float32")
    assert file_for("/c", "abc", "float32") != file_for("/c", "abc", "bfloat16")
