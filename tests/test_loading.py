"""Loading models by configuration: the embedded GGUF, a local transformers directory, clear errors."""

from __future__ import annotations

import pytest
import torch

from worker.common.errors import ModelError
from worker.common.prompts import load_prompts
from worker.common.settings import PROMPTS_FILE, load_settings
from worker.engine import converting, embedded
from worker.engine.loading import check_model, load
from worker.engine.model import Engine

pytestmark = pytest.mark.model  # the engine fixture and the embedded GGUF


def test_embedded_parts_are_found_and_assemble_to_the_pinned_hash(tmp_path):
    """The six PyPI parts are located with find_spec and give the file whose SHA-256 is pinned."""
    assert len(embedded.part_paths()) == 6
    path = embedded.ensure_gguf(tmp_path)
    assert path.stat().st_size == embedded.SIZE
    assert embedded.sha256_of(path) == embedded.SHA256


def test_a_corrupted_cached_gguf_is_replaced_not_used(tmp_path):
    path = embedded.ensure_gguf(tmp_path)
    with path.open("r+b") as f:
        f.seek(1000)
        f.write(b"garbage!")
    again = embedded.ensure_gguf(tmp_path)
    assert embedded.sha256_of(again) == embedded.SHA256


@pytest.mark.parametrize("model, message", [
    ("/nonexistent/model.gguf", "GGUF file not found: /nonexistent/model.gguf"),
    ("/nonexistent/dir", "model '/nonexistent/dir' not found"),
])
def test_missing_model_is_one_clear_error(model, message):
    with pytest.raises(ModelError, match=message):
        check_model(load_settings(model=model))


def test_any_local_transformers_directory_works_by_configuration(tmp_path, engine):
    """MOODQ_MODEL=<dir> loads a causal LM saved with save_pretrained (here a tiny random Qwen2)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(engine.tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path)
    engine.tok.save_pretrained(tmp_path)
    settings = load_settings(model=str(tmp_path), dtype="float32")
    check_model(settings)
    loaded = load(settings)
    assert loaded.model_id == str(tmp_path) and not loaded.warm
    tiny = Engine(loaded, load_prompts(PROMPTS_FILE))
    assert all(j.label in ("positive", "negative") for j in tiny.judge(["hello", "你好"], "en"))
    assert isinstance(tiny.draft("hi", "positive", "en", [], max_new_tokens=4, deadline_s=10,
                                 sampling={"do_sample": False}).text, str)


def test_warm_start_check_neither_hashes_nor_assembles_the_gguf(tmp_path, engine):
    """With converted weights cached, the main process's check skips the 491 MB GGUF entirely and parses
    nothing: the load parses the tokenizer, once, while the weights load."""
    from worker.engine import loading

    real = load_settings()
    converted = converting.converted_dir(real.cache_dir, embedded.SHA256, engine.plan.dtype)
    assert converting.ready(converted)  # the session's engine fixture made it
    (tmp_path / "converted").mkdir()
    (tmp_path / "converted" / converted.name).symlink_to(converted)
    for kept in ("probe", "int8", "prefixes"):  # this host's kernel table, int8 copies and prompt prefixes: a warm start
        (tmp_path / kept).symlink_to(real.cache_dir / kept)  # (writing them: tests/test_int8store.py, test_prefixes.py)
    settings = load_settings(cache_dir=str(tmp_path))
    parsed = loading._tokenizer.cache_info().misses
    check_model(settings)
    assert not (tmp_path / embedded.FILE_NAME).exists() and loading._tokenizer.cache_info().misses == parsed
    loaded = load(settings)
    assert loading._tokenizer.cache_info().misses == parsed + 1 and loaded.tokenizer.eos_token == engine.tok.eos_token
    assert loaded.warm and not (tmp_path / embedded.FILE_NAME).exists()


@pytest.mark.parametrize("content", [b"not a gguf at all" * 100, "truncated"])
def test_a_corrupt_gguf_fails_the_start_up_check(tmp_path, content):
    """The main process reads the GGUF's header and tensor table before the pool starts."""
    bad = tmp_path / "bad.gguf"
    if content == "truncated":  # the GGUF cut in its metadata (its parts are its bytes in order)
        with embedded.part_paths()[0].open("rb") as f:
            bad.write_bytes(f.read(64_000))  # cut further in, the reader parses 151k vocabulary strings first: 5 s
        assert bad.stat().st_size == 64_000
    else:
        bad.write_bytes(content)
    with pytest.raises(ModelError, match="GGUF file .* (is not a readable GGUF|is truncated)"):
        check_model(load_settings(model=str(bad)))


def test_a_packaged_model_that_is_not_installed_says_how_to_get_it():
    """The opt-in 1.5B model (or any packaged one) missing its parts: one error naming them and the install."""
    from dataclasses import replace

    missing = replace(embedded.LARGE, distribution="moodq-no-such-part", parts=4)
    with pytest.raises(ModelError, match=r"missing packages: moodq-no-such-part1, moodq-no-such-part2, "
                                         r"moodq-no-such-part3 and 1 more.*pip install -e '\.\[large\]'"):
        embedded.part_paths(missing)
    assert embedded.MODELS["embedded-large"].parts == 22 and embedded.LARGE.sha256 != embedded.DEFAULT.sha256


def test_an_unreadable_converted_copy_is_removed_and_converted_again(tmp_path, caplog):
    """Unit test of the cache's recovery (no model involved): converted weights marked ready but unreadable
    (here overwritten; once by a test writing through a link into the real cache) are removed and the
    GGUF is converted again, not a start that fails on every try. ``locate`` stands in for the GGUF: it
    raising proves the conversion was reached, without the minute a real conversion takes."""
    class Converting(Exception):
        pass

    def locate():
        raise Converting

    settings = load_settings(cache_dir=str(tmp_path))
    sha = "ab" * 32
    converted = converting.converted_dir(settings.cache_dir, sha, "float32")
    converted.mkdir(parents=True)
    (converted / "config.json").write_text('{"model_type": "qwen2"}')
    (converted / "model.safetensors").write_bytes(b"x" * 1000)
    (converted / "READY").write_text("ok")
    with pytest.raises(Converting):
        converting.weights(locate, sha, settings.cache_dir, "float32")
    assert not converted.exists()
    assert "cannot be read" in caplog.text and "converting again" in caplog.text


def test_a_start_waits_for_another_process_converting_the_gguf_and_reads_its_copy(tmp_path, engine):
    """Two pool processes (or containers on one cache volume) starting on an empty cache: the second waits on
    the conversion's lock, then loads the first one's copy and converts nothing. Here the test holds the lock,
    and the copy it then puts in place is the real one (linked)."""
    import threading

    from worker.engine import cachefiles

    real = converting.converted_dir(load_settings().cache_dir, embedded.SHA256, engine.plan.dtype)
    converted = converting.converted_dir(tmp_path, embedded.SHA256, engine.plan.dtype)
    located, result = [], {}

    def start():
        result["model"], result["warm"] = converting.weights(lambda: located.append(1), embedded.SHA256, tmp_path,
                                                             engine.plan.dtype)

    with cachefiles.only_one(converted):
        waiting = threading.Thread(target=start)
        waiting.start()
        waiting.join(1.0)
        assert waiting.is_alive()  # held by the lock, not converting
        converted.symlink_to(real)
    waiting.join(60)
    assert not waiting.is_alive() and result["warm"] and not located
    assert result["model"].config.num_hidden_layers == engine.model.config.num_hidden_layers


def test_an_entry_whose_lock_cannot_be_opened_is_made_unlocked_with_a_warning(tmp_path, caplog):
    """Unit test of the cache's lock (no model involved): where the lock file cannot be opened (here a folder
    stands in its place; in production, a cache folder this user cannot write) the entry is still made."""
    from worker.engine import cachefiles

    entry = tmp_path / "converted" / "0123-bfloat16"
    cachefiles.lock_file(entry).mkdir(parents=True)
    made = []
    with cachefiles.only_one(entry):
        made.append(entry)
    assert made and "cannot lock" in caplog.text
