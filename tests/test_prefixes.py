"""Prompt prefixes' KV caches kept on disk (worker.engine.prefixes), on the embedded model."""

from __future__ import annotations

import pytest
import torch

from worker.engine.kernels import decoding
from worker.engine.prefixes import Prefixes, folder_for

pytestmark = pytest.mark.model


def _same(a, b) -> bool:
    return all(torch.equal(ka, kb) and torch.equal(va, vb) for (ka, va, *_), (kb, vb, *_) in zip(a, b, strict=True))


def test_a_prefix_is_read_back_from_disk_bit_for_bit_in_each_phase(engine, tmp_path):
    assert engine.prefixes.folder is not None  # the embedded model has a weights hash: its worker keeps them
    ids = engine.chat.sentiment_frame(engine.prompts.languages["en"])[0][:12]
    first = Prefixes(engine.model, tmp_path)
    computed = first.get(ids)
    assert first.computed == 1 and len(list(tmp_path.glob("*.safetensors"))) == 1
    again = Prefixes(engine.model, tmp_path)
    assert _same(again.get(ids), computed) and again.computed == 0
    with decoding():  # drafting runs int8 where scoring keeps float layers: another cache, another file
        decoded = again.get(ids)
        assert again.computed == 1 and _same(Prefixes(engine.model, tmp_path).get(ids), decoded)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_a_damaged_prefix_file_is_computed_again_and_replaced(engine, tmp_path):
    ids = engine.chat.sentiment_frame(engine.prompts.languages["zh"])[0][:8]
    good = Prefixes(engine.model, tmp_path).get(ids)
    (file,) = tmp_path.glob("*.safetensors")
    file.write_bytes(file.read_bytes()[:100])
    fresh = Prefixes(engine.model, tmp_path)
    assert _same(fresh.get(ids), good) and fresh.computed == 1
    assert Prefixes(engine.model, tmp_path)._read(tuple(ids), "score") is not None


def test_a_second_engine_on_the_same_folder_computes_no_prefix(engine, tmp_path):
    """What a worker's later start gains: its sentiment frames and its replies' system prompts read from disk."""
    from worker.engine.loading import Loaded
    from worker.engine.model import Engine

    def run() -> Engine:
        eng = Engine(Loaded(engine.model, engine.tok, engine.model_id, 0, True, engine.plan, tmp_path), engine.prompts)
        eng.judge(["Broken again."], "en")
        eng.draft("Broken again.", "negative", "en", [], max_new_tokens=2, deadline_s=60, sampling={"do_sample": False})
        return eng

    assert run().prefixes.computed == len(engine.prompts.languages) + 1  # the frames, then one reply's system prompt
    assert run().prefixes.computed == 0


def test_a_prefix_that_cannot_be_saved_costs_a_warning(engine, tmp_path, caplog):
    (tmp_path / "file").write_text("")
    prefixes = Prefixes(engine.model, tmp_path / "file" / "folder")
    assert prefixes.get(engine.chat.sentiment_frame(engine.prompts.languages["en"])[0][:4]) is not None
    assert "could not save" in caplog.text


def test_the_prefix_folder_changes_with_the_weights_and_the_path():
    assert folder_for("/c", None, "avx2/float32 score:float32 decode:float32") is None  # no hash: memory only
    a = folder_for("/c", "abc", "avx2/float32 score:int8-fbgemm decode:int8-fbgemm")
    assert a == folder_for("/c", "abc", "avx2/float32 score:int8-fbgemm decode:int8-fbgemm")
    assert a != folder_for("/c", "abd", "avx2/float32 score:int8-fbgemm decode:int8-fbgemm")
    assert a != folder_for("/c", "abc", "avx2/float32 score:float32 decode:int8-fbgemm")
