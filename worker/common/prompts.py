"""Prompt files: YAML data validated into typed templates, plus language choice.

A broken file fails when it is loaded (at worker start) with one readable error.
Templates use ``$name`` placeholders (``string.Template``); a missing one is an error.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from worker.common.errors import ConfigError, readable

UNSURE = "unsure"  # the reply tone of a label the model was not sure of (ReplyPrompt.unsure_below)
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
LETTER = re.compile(r"[^\W\d_]")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Example(Strict):
    text: str = Field(min_length=1)
    label: str


class SentimentPrompt(Strict):
    system: str
    user: str = Field(description="User turn; must contain $text.")
    label_words: dict[str, str] = Field(description="What the model says for each label, e.g. positive: 正面.")
    examples: list[Example] = Field(default_factory=list, description="Demonstrations (never dev-set lines).")
    calibrate: list[str] = Field(default_factory=lambda: ["", "N/A", "[MASK]"],
                                 description="Content-free inputs whose label prior calibration divides out.")
    calibration: bool = Field(True, description="Apply contextual calibration by default (eval can override).")
    label_prior: dict[str, float] = Field(default_factory=dict, validation_alias=AliasChoices("label_prior", "label_bias"),
                                          description="Per label: added to its log-probability "
                                         "before the choice (a prior measured on data, e.g. to make neutral rarer).")

    def render_user(self, text: str) -> str:
        return Template(self.user).substitute(text=text)


class ReplyExample(Strict):
    label: str
    text: str = Field(min_length=1)
    reply: str = Field(min_length=1)


class ReplyPrompt(Strict):
    system: str = Field(description="May use $label and $hint.")
    hints: dict[str, str] = Field(default_factory=dict, description="Per-label advice put into $hint.")
    examples: list[ReplyExample] = Field(default_factory=list, description="Demonstrations: a message and the reply "
                                         "a desk lead would send, shown as earlier chat turns to replies for that "
                                         "label (never lines of a set replies are measured on).")
    openings: dict[str, str] = Field(default_factory=dict, description="Per label: the words the reply starts "
                                     "with (response priming), written into the assistant turn; part of the reply.")
    banned: list[str] = Field(default_factory=list, description="Phrases the reply may never contain "
                              "(refusals, 'as an AI'); generation cannot produce their tokens in that order.")
    one_paragraph: bool = Field(False, description="No line breaks in a reply, so it cannot turn into a list.")
    unsure_below: float = Field(0.0, ge=0, le=1, description="A label less sure than this (its confidence) gets the "
                                "reply hint and opening named 'unsure' instead of its own: a message the model "
                                "could not read as clearly positive or negative is often a question or a mixed one.")
    unsure_word: str = Field("", description="What $label says in the reply's system text for an unsure label.")

    def tone(self, label: str, confidence: float | None) -> str:
        """The hint and opening a reply is drafted with: its label's, or 'unsure' below ``unsure_below``."""
        return UNSURE if confidence is not None and confidence < self.unsure_below else label

    def render_system(self, label: str, label_word: str) -> str:
        return Template(self.system).substitute(label=label_word, hint=self.hints.get(label, ""))

    def examples_for(self, label: str) -> list[ReplyExample]:
        return [ex for ex in self.examples if ex.label == label]


class Language(Strict):
    sentiment: SentimentPrompt
    reply: ReplyPrompt


class PromptSet(Strict):
    version: str = Field(min_length=1)
    labels: list[str] = Field(min_length=2)
    int8_scoring: bool | dict[str, list[str]] = Field(
        False, description="int8 kernels may score labels with this file: per model (a MOODQ_MODEL value), the "
        "'dtype:kernel' paths whose labels were measured within 1 point of float scoring with it on both dev sets "
        "(bench/paths.py); true: any model, on the paths worker.engine.kernels.LABEL_SAFE lists. Otherwise labels are "
        "scored in float, whatever the kernel probe measured fastest.")
    languages: dict[str, Language] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> "PromptSet":
        paths = self.int8_scoring.values() if isinstance(self.int8_scoring, dict) else ()
        if wrong := [p for ps in paths for p in ps if not re.fullmatch(r"(float32|bfloat16):int8-[a-z-]+", p)]:
            raise ValueError(f"int8_scoring paths are written dtype:kernel, e.g. bfloat16:int8-onednn; not {wrong}")
        labels = set(self.labels)
        if len(labels) != len(self.labels):
            raise ValueError("labels must be distinct")
        if UNSURE in labels:
            raise ValueError(f"{UNSURE!r} names the reply tone of an unsure label; call the label something else")
        for code, lang in self.languages.items():
            s = lang.sentiment
            where = f"languages.{code}.sentiment"
            if set(s.label_words) != labels:
                raise ValueError(
                    f"{where}.label_words must name exactly the labels {sorted(labels)}, got {sorted(s.label_words)}")
            if len(set(s.label_words.values())) != len(labels):
                raise ValueError(f"{where}.label_words must be distinct words")
            if set(s.label_prior) - labels:
                raise ValueError(f"{where}.label_prior: unknown labels {sorted(set(s.label_prior) - labels)}")
            for i, ex in enumerate(s.examples):
                if ex.label not in labels:
                    raise ValueError(f"{where}.examples[{i}]: unknown label {ex.label!r} (labels: {sorted(labels)})")
            _check_template(s.user, {"text"}, f"{where}.user")
            _check_template(lang.reply.system, {"label", "hint"}, f"languages.{code}.reply.system")
            for i, ex in enumerate(lang.reply.examples):
                if ex.label not in labels:
                    raise ValueError(f"languages.{code}.reply.examples[{i}]: unknown label {ex.label!r} "
                                     f"(labels: {sorted(labels)})")
            for part in ("hints", "openings"):
                unknown = set(getattr(lang.reply, part)) - labels - {UNSURE}
                if unknown:
                    raise ValueError(f"languages.{code}.reply.{part}: unknown labels {sorted(unknown)}")
            unsure = lang.reply.unsure_below and (UNSURE not in lang.reply.hints or not lang.reply.unsure_word
                                                  or (lang.reply.openings and UNSURE not in lang.reply.openings))
            if unsure:
                raise ValueError(f"languages.{code}.reply.unsure_below needs hints.{UNSURE}, unsure_word "
                                 f"and (where the labels have openings) openings.{UNSURE}")
        return self

    def int8_scores(self, model: str) -> bool | frozenset[tuple[str, str]]:
        """Which int8 kernels may score labels of ``model`` (a MOODQ_MODEL value) with this file: True (those
        ``kernels.LABEL_SAFE`` lists), False (none), or the (kernel, dtype) pairs measured with this model."""
        if isinstance(self.int8_scoring, bool):
            return self.int8_scoring
        return frozenset(tuple(reversed(p.split(":"))) for p in self.int8_scoring.get(model, ())) or False

    def language_of(self, text: str, requested: str | None = None) -> str:
        """The prompt language for a message: the requested one, else detected from the script."""
        if requested:
            if requested not in self.languages:
                raise KeyError(requested)
            return requested
        cjk = len(CJK.findall(text))
        letters = len(LETTER.findall(text))
        guess = "zh" if letters and cjk / letters >= 0.2 else "en"
        return guess if guess in self.languages else next(iter(self.languages))


def _check_template(text: str, allowed: set[str], where: str) -> None:
    names = {m.group("named") or m.group("braced") for m in Template.pattern.finditer(text)} - {None}
    unknown = names - allowed
    if unknown:
        raise ValueError(f"{where}: unknown placeholder(s) {sorted('$' + n for n in unknown)}; allowed {sorted(allowed)}")
    if "text" in allowed and "text" not in names:
        raise ValueError(f"{where}: must contain $text")


def load_prompts(path: Path) -> PromptSet:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"prompt file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"prompt file {path} is not valid YAML: {exc}") from None
    try:
        return PromptSet.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"prompt file {path} is invalid:\n" + "\n".join(readable(exc, "  ", "file"))) from None
