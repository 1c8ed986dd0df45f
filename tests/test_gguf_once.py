"""A first start reads a GGUF's metadata once (worker.engine.gguf_once), with the real gguf reader and the real
transformers calls that open it, on a GGUF of a few bytes written here."""

from __future__ import annotations

import threading

import gguf
import numpy as np
import pytest
from transformers import AutoConfig

from worker.engine import gguf_once


@pytest.fixture
def tiny_gguf(tmp_path):
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def parses(monkeypatch):
    """How many times the gguf library's reader parsed a file (a counting subclass of the real reader)."""
    count = {"n": 0}

    class Counting(gguf.GGUFReader):
        def __init__(self, *args, **kwargs):
            count["n"] += 1
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", Counting)
    return count


def _config(path):
    return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)


def test_transformers_opens_a_gguf_once_inside_the_block_and_every_time_outside(tiny_gguf, parses):
    _config(tiny_gguf)
    _config(tiny_gguf)
    assert parses["n"] == 2
    with gguf_once.shared() as readers:
        first = _config(tiny_gguf)
        again = _config(tiny_gguf)
        assert parses["n"] == 3 and list(readers) == [tiny_gguf.resolve()]
    assert first.to_dict() == again.to_dict() and first.hidden_size == 8
    assert not readers and gguf.GGUFReader.__name__ == "Counting"  # restored, its readers dropped
    _config(tiny_gguf)
    assert parses["n"] == 4


def test_nested_and_overlapping_blocks_restore_the_reader_once_all_have_closed(tiny_gguf, parses):
    counting = gguf.GGUFReader
    entered, leave = threading.Event(), threading.Event()

    def other_thread():
        with gguf_once.shared():
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=other_thread)
    with gguf_once.shared():
        thread.start()
        entered.wait(10)
        with gguf_once.shared():
            assert gguf.GGUFReader(str(tiny_gguf)) is gguf.GGUFReader(tiny_gguf)
    assert gguf.GGUFReader is not counting  # the other thread's block is still open
    leave.set()
    thread.join(10)
    assert gguf.GGUFReader is counting and parses["n"] == 1


def test_a_gguf_file_is_parsed_at_a_start_only_while_no_converted_copy_of_its_bytes_is_there(tiny_gguf, parses, tmp_path):
    """A worker's main process checks MOODQ_MODEL=<file>.gguf by reading it whole (~10 s for the 0.5B's
    vocabulary); once a copy converted from the same bytes is cached, hashing it is the check."""
    from worker.common.errors import ModelError
    from worker.common.settings import load_settings
    from worker.engine import converting, embedded, loading

    settings = load_settings(model=str(tiny_gguf), cache_dir=str(tmp_path / "cache"))
    loading.check_model(settings)
    assert parses["n"] == 1
    converted = converting.converted_dir(settings.cache_dir, embedded.sha256_of(tiny_gguf), "float32")
    converted.mkdir(parents=True)
    (converted / "READY").write_text("ok")
    loading.check_model(settings)
    assert parses["n"] == 1
    tiny_gguf.write_bytes(tiny_gguf.read_bytes()[:100])  # other bytes: read again, and refused
    with pytest.raises(ModelError, match="is not a readable GGUF|is truncated"):
        loading.check_model(settings)
    assert parses["n"] == 2


def test_a_conversion_draws_no_progress_bar_into_a_worker_log(tiny_gguf, capsys):
    """transformers' bar goes to stderr, which a Celery worker logs line by line as WARNING; converting.no_bar
    silences it for the conversion only (outside it, the same call draws the bar)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from worker.engine import converting

    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=4, hidden_size=8, num_hidden_layers=1, intermediate_size=16,
                                         num_attention_heads=2, num_key_value_heads=1))
    with converting.no_bar():
        inside = load_gguf_checkpoint(tiny_gguf, return_tensors=True, model_to_load=model)
    assert "Converting and de-quantizing" not in capsys.readouterr().err
    outside = load_gguf_checkpoint(tiny_gguf, return_tensors=True, model_to_load=model)
    assert "Converting and de-quantizing" in capsys.readouterr().err
    assert list(inside["tensors"]) == list(outside["tensors"]) == ["model.embed_tokens.weight"]
