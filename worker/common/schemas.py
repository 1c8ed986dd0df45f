"""Messages in, records out. Pydantic only: the producer imports this without torch."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Status = Literal["pending", "labeled", "done", "review", "failed"]
# Final: done (the reply, if any, passed every rule), review (stored with the rules its reply still breaks:
# a person reads it before it is sent), failed (with the reason).
FINAL: frozenset[str] = frozenset({"done", "review", "failed"})


class Message(BaseModel):
    """One incoming message, as a producer accepts it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=200)
    text: str
    conversation_id: str | None = Field(None, max_length=200)
    lang: str | None = Field(None, pattern=r"^[a-z]{2,3}$")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id", "conversation_id", mode="before")
    @classmethod
    def _ids_as_text(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("must be a string or a number, not a boolean")
        return str(v).strip() if isinstance(v, (int, str)) else v

    @field_validator("text", mode="before")
    @classmethod
    def _text_is_string(cls, v: Any) -> Any:
        if not isinstance(v, str):
            raise ValueError(f"text must be a string, got {type(v).__name__}")
        return v

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is empty or only whitespace")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text is not valid unicode (lone surrogate)") from None
        return v


class Timings(BaseModel):
    queued_ms: float | None = None
    sentiment_ms: float | None = None
    reply_ms: float | None = None
    sentiment_batch: int | None = None  # messages scored in the same pass
    reply_batch: int | None = None      # messages its reply task had taken on when this reply was stored


class Record(BaseModel):
    """The one durable result of a message, keyed by message id."""

    id: str
    text: str
    conversation_id: str | None = None
    lang: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    status: Status = "pending"
    label: str | None = None
    confidence: float | None = None
    probs: dict[str, float] | None = None
    scores: dict[str, float] | None = None
    reply: str | None = None
    reply_truncated: bool | None = None
    flags: list[str] = Field(default_factory=list, description="Reply rules the stored reply still breaks after "
                             "redrafting (status review): refusal, wrong_language, echo, not_addressing, loop, empty, cut.")
    drafts: int | None = Field(None, description="Drafts made for the stored reply (more than 1: earlier ones were flagged).")
    context_ids: list[str] = Field(default_factory=list, description="Earlier turns the reply saw.")
    error: str | None = None
    error_stage: str | None = None
    attempts: dict[str, int] = Field(default_factory=dict, description="Deliveries per stage, retries and redeliveries included.")
    requeued: int = Field(0, description="Times `moodq retry-failed` put this message back.")
    republished: int = Field(0, description="Times the sweep published this message's task again, because the "
                             "producer that wrote the record died before publishing it.")
    worker: str | None = Field(None, description="The worker node that last processed the message.")
    timings: Timings = Field(default_factory=Timings)
    model: str | None = None
    path: str | None = Field(None, description="Compute path that labeled it: CPU class/dtype+quantisation.")
    prompt_version: str | None = None
    seq: int = 0
    enqueued_at: float = Field(default_factory=time.time)
    labeled_at: float | None = None
    finished_at: float | None = None
    updated_at: float = Field(default_factory=time.time)

    @classmethod
    def from_message(cls, msg: Message, seq: int) -> "Record":
        return cls(**msg.model_dump(), seq=seq)


EXPORT_COLUMNS = [
    "id", "text", "status", "label", "confidence", "reply", "flags", "reply_truncated", "drafts", "error", "error_stage",
    "attempts_sentiment", "attempts_reply", "requeued", "republished", "worker", "queued_ms", "sentiment_ms", "reply_ms",
    "model", "path", "prompt_version", "lang", "conversation_id", "enqueued_at", "labeled_at",
    "finished_at", "metadata",
]
