"""Settings, prompt files, input parsing and the compose file: validation without a model."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from producer import sources
from tests.conftest import DATA, ROOT
from worker.common.errors import ConfigError
from worker.common.prompts import load_prompts
from worker.common.settings import PROMPTS_FILE, load_settings


def test_settings_read_from_environment(monkeypatch):
    """MOODQ_* variables reach the settings object."""
    monkeypatch.setenv("MOODQ_MAX_CHARS", "123")
    monkeypatch.setenv("MOODQ_REPLY_LABELS", "negative")
    s = load_settings()
    assert s.max_chars == 123 and s.replies_for("negative") and not s.replies_for("positive")


def test_settings_errors_name_the_variable(monkeypatch):
    """A bad value fails at start with the variable's name and the reason."""
    monkeypatch.setenv("MOODQ_MAX_CHARS", "lots")
    with pytest.raises(ConfigError, match="MOODQ_MAX_CHARS: Input should be a valid integer"):
        load_settings()
    monkeypatch.delenv("MOODQ_MAX_CHARS")
    with pytest.raises(ConfigError, match="sentiment_hard_limit .* must be greater than sentiment_soft_limit"):
        load_settings(sentiment_soft_limit=10, sentiment_hard_limit=5)


def test_visibility_timeout_outlasts_limits_and_backoff():
    s = load_settings(reply_hard_limit=300, reply_soft_limit=200, retry_backoff_max=100)
    assert s.broker_visibility_timeout() == 2 * (300 + 100) + 60
    assert load_settings(retry_backoff_max=60).broker_visibility_timeout() == 360  # the README's figure
    assert load_settings(visibility_timeout=75, reply_hard_limit=30, reply_soft_limit=20, sentiment_hard_limit=30,
                         sentiment_soft_limit=20, retry_backoff_max=5).broker_visibility_timeout() == 75
    with pytest.raises(ConfigError, match="visibility_timeout \\(100\\) must be at least .* \\(150 s\\)"):
        load_settings(visibility_timeout=100, retry_backoff_max=60)  # 90 s hard limit + 60 s backoff


def test_a_renamed_setting_is_refused_with_its_new_name(monkeypatch):
    monkeypatch.setenv("MOODQ_BATCH_SIZE", "8")
    with pytest.raises(ConfigError, match="MOODQ_BATCH_SIZE was renamed MOODQ_SENTIMENT_BATCH_SIZE"):
        load_settings()


def test_default_prompts_are_valid():
    p = load_prompts(PROMPTS_FILE)
    assert p.labels == ["positive", "negative"] and set(p.languages) == {"zh", "en"}
    assert p.language_of("这个天气真让人烦躁。") == "zh" and p.language_of("so annoying") == "en"


def test_replies_are_greedy_first_and_redrafts_sampled_by_default():
    options = load_settings().draft_options()
    assert options["sampling"]["do_sample"] is False and "temperature" not in options["sampling"]
    assert options["resampling"]["do_sample"] is True and options["resampling"]["temperature"] == 0.7


def _broken(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(PROMPTS_FILE.read_text(encoding="utf-8"))
    edit(data)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["languages"]["zh"]["sentiment"].update(examples=[{"text": "x", "label": "angry"}]),
     "examples[0]: unknown label 'angry'"),
    (lambda d: d["languages"]["en"]["reply"].update(examples=[{"label": "angry", "text": "x", "reply": "y"}]),
     "reply.examples[0]: unknown label 'angry'"),
    (lambda d: d["languages"]["en"]["reply"].update(examples=[{"label": "negative", "text": "x"}]),
     "reply: Field required"),
    (lambda d: d["languages"]["en"]["sentiment"].update(user="Sentiment of this:"), "must contain $text"),
    (lambda d: d["languages"]["en"]["sentiment"].update(user="$text $oops"), "unknown placeholder"),
    (lambda d: d["languages"]["en"]["sentiment"]["label_words"].pop("negative"), "must name exactly the labels"),
    (lambda d: d["languages"]["en"]["sentiment"].update(colour="red"), "colour: Extra inputs are not permitted"),
    (lambda d: d.pop("version"), "version: Field required"),
    (lambda d: d["languages"]["en"]["reply"].update(unsure_word=""), "unsure_below needs hints.unsure, unsure_word"),
    (lambda d: d["languages"]["zh"]["reply"]["openings"].pop("unsure"), "unsure_below needs hints.unsure, unsure_word"),
    (lambda d: d.update(labels=["positive", "unsure"]), "'unsure' names the reply tone of an unsure label"),
    (lambda d: d["languages"]["zh"]["reply"]["hints"].update(angry="x"), "reply.hints: unknown labels ['angry']"),
])
def test_broken_prompt_file_fails_with_a_clear_message(tmp_path, edit, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_prompts(_broken(tmp_path, edit))


def test_prompt_file_that_is_not_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("labels: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_prompts(path)


def test_sources_report_bad_lines_and_keep_good_ones():
    """JSONL: each bad line becomes an error with its line number; good lines keep their metadata."""
    text = "\n".join([
        json.dumps({"id": 7, "text": "ok", "shop": "north"}),
        "{broken",
        json.dumps({"text": ""}),
        json.dumps({"text": ["a"]}),
        json.dumps({"text": "y" * 11}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"text": "fine", "lang": "EN!"}),
    ])
    items = list(sources.read(io.StringIO(text), "in.jsonl", "auto", max_chars=10))
    good = [i for i in items if not isinstance(i, sources.LineError)]
    bad = {i.line: i.reason for i in items if isinstance(i, sources.LineError)}
    assert [(m.id, m.text, m.metadata) for m in good] == [("7", "ok", {"shop": "north"})]
    assert bad[2].startswith("invalid JSON")
    assert bad[3] == "text: text is empty or only whitespace"
    assert bad[4] == "text: text must be a string, got list"
    assert bad[5] == "text is 11 characters, over the limit of 10 (MOODQ_MAX_CHARS)"
    assert bad[6] == "expected an object, got list"
    assert bad[7].startswith("lang: String should match pattern")


def test_csv_source_with_line_numbers():
    data = "id,text,conversation_id,team\n1,hello there,c1,blue\n2,,c1,red\n"
    items = list(sources.read(io.StringIO(data), "in.csv", "auto", max_chars=100))
    assert items[0].id == "1" and items[0].conversation_id == "c1" and items[0].metadata == {"team": "blue"}
    assert isinstance(items[1], sources.LineError) and items[1].line == 3


def test_excel_csv_with_bom_tsv_and_piped_jsonl_are_read(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark; a .tsv is tab separated; JSONL piped on
    stdin (no suffix to go by) is recognised by its first line."""
    bom_csv = tmp_path / "excel.csv"
    bom_csv.write_bytes("\ufeffid,text\n1,héllo\n".encode("utf-8"))
    with sources.open_text(str(bom_csv)) as f:
        items = list(sources.read(f, str(bom_csv), "auto", max_chars=100))
    assert [(m.id, m.text) for m in items] == [("1", "héllo")]
    bom_jsonl = tmp_path / "in.jsonl"
    bom_jsonl.write_bytes('\ufeff{"text": "first"}\n'.encode("utf-8"))
    with sources.open_text(str(bom_jsonl)) as f:
        assert [m.text for m in sources.read(f, str(bom_jsonl), "auto", max_chars=100)] == ["first"]
    tsv = list(sources.read(io.StringIO("id\ttext\nt1\tone, with a comma\n"), "in.tsv", "auto", max_chars=100))
    assert [(m.id, m.text) for m in tsv] == [("t1", "one, with a comma")]
    piped = list(sources.read(io.StringIO('{"text": "as json", "id": "p1"}\n'), "-", "auto", max_chars=100))
    assert [(m.id, m.text) for m in piped] == [("p1", "as json")]
    plain = list(sources.read(io.StringIO("just words\n"), "-", "auto", max_chars=100))
    assert [m.text for m in plain] == ["just words"]


def test_a_language_without_prompts_is_refused_at_enqueue():
    items = list(sources.read(io.StringIO('{"text": "bonjour", "lang": "fr"}\n{"text": "hi", "lang": "en"}\n'),
                              "in.jsonl", "auto", max_chars=100, languages={"zh", "en"}))
    assert isinstance(items[0], sources.LineError) and "no prompts for 'fr'" in items[0].reason
    assert items[1].lang == "en"


def test_enqueue_exits_non_zero_when_nothing_valid_went_in(tmp_path):
    """A script must be able to tell: every line rejected (or no file at all) is exit 1 / a usage error."""
    from click.testing import CliRunner

    from worker.cli.main import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": ""}\n{broken\n', encoding="utf-8")
    out = CliRunner().invoke(main, ["enqueue", str(bad)])
    assert out.exit_code == 1 and "enqueued 0" in out.output and "nothing valid to enqueue" in out.output
    assert CliRunner().invoke(main, ["enqueue"]).exit_code == 2  # no argument: a usage error, not "enqueued 0"


def test_unreachable_redis_is_one_clear_error():
    """Said at once, no traceback, exit 2 within seconds, and the URL (without password) in the message."""
    env = {**os.environ, "MOODQ_REDIS_URL": "redis://:s3cret@127.0.0.1:1/0", "MOODQ_REDIS_WAIT_S": "2"}
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "worker", "watch"], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=60)
    assert run.returncode == 2 and time.monotonic() - started < 30  # the worker-side retries last ~35 s
    assert run.stderr.startswith("connecting to Redis at redis://:**@127.0.0.1:1/0 (retrying for up to 2 s")
    assert "error: cannot reach Redis at redis://:**@127.0.0.1:1/0" in run.stderr
    assert "Traceback" not in run.stderr and "s3cret" not in run.stderr


def test_compose_file_matches_the_compose_schema():
    schema = json.loads((DATA / "compose-spec.json").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    jsonschema.validate(compose, schema)
    assert set(compose["services"]) >= {"redis", "worker", "flower", "producer"}
    assert "noeviction" in " ".join(compose["services"]["redis"]["command"])
    assert "healthcheck" in compose["services"]["redis"]
