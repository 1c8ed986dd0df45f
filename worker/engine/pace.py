"""How fast this process runs, measured as it works, so a task takes on only what ends inside its limit.

Three rates, each a moving average of what the process measured: seconds per character scored (per
language), seconds per prompt token prefilled, and seconds per decode step (per number of rows). A
message longer than the scoring pass reads (``max_text_tokens``) costs only what is read: its characters
are counted up to ``max_text_tokens`` x the characters per token measured for its language.
Before the first measurement they are estimated from the kernel probe's table (worker.engine.probe), with
a margin, so the first claim on a slow host is already small.
"""

from __future__ import annotations

import threading

SMOOTHING = 0.3  # weight of the newest measurement in the moving averages
OVERHEAD = 1.6  # whole forward pass / its linear layers (attention, norms, the head, Python), for priors
CHARS_PER_TOKEN = 1.0  # prior only: zh is ~1.3, en ~4; assuming 1 over-estimates the first cost (safe)
FALLBACK_TOKEN_S = 0.01  # priors when there is no probe table (a model loaded without one)
FALLBACK_STEP_S = 0.1
PROMPT_TOKENS = 150  # a reply prompt's tokens beyond its cached system prompt, until some are measured


class Pace:
    def __init__(self, plan=None, max_text_tokens: int = 0):
        self._lock = threading.Lock()
        self._char_s: dict[str, float] = {}
        self._chars_per_token: dict[str, float] = {}
        self.max_text_tokens = max_text_tokens  # tokens of a message a scoring pass reads (0: all)
        self._step_s: dict[int, float] = {}
        self._prefill_s: float | None = None
        self._prompt_tokens: float = PROMPT_TOKENS
        self._plan = plan

    # --- what the process measured
    def scored(self, lang: str, chars: float, seconds: float, chars_per_token: float | None = None) -> None:
        """A pass that read ``chars`` characters (see :meth:`read_chars`) in ``seconds``; its texts had
        ``chars_per_token`` characters per token, if given."""
        if chars > 0 and seconds > 0:
            self._mix(self._char_s, lang, seconds / chars)
        if chars_per_token:
            self._mix(self._chars_per_token, lang, chars_per_token)

    def read_chars(self, lang: str, chars: int) -> float:
        """What a message of ``chars`` characters costs a scoring pass, in characters: all of them, or, for one
        longer than the pass reads, as many as ``max_text_tokens`` hold in this language (once measured)."""
        per_token = self._chars_per_token.get(lang)
        if not self.max_text_tokens or per_token is None:
            return chars
        return min(chars, self.max_text_tokens * per_token)

    def stepped(self, rows: int, seconds: float) -> None:
        if rows > 0 and seconds > 0:
            self._mix(self._step_s, rows, seconds)

    def prefilled(self, tokens: int, seconds: float) -> None:
        if tokens > 0 and seconds > 0:
            with self._lock:
                new = seconds / tokens
                self._prefill_s = new if self._prefill_s is None else SMOOTHING * new + (1 - SMOOTHING) * self._prefill_s
                self._prompt_tokens = SMOOTHING * tokens + (1 - SMOOTHING) * self._prompt_tokens

    def _mix(self, averages: dict, key, value: float) -> None:
        with self._lock:
            old = averages.get(key)
            averages[key] = value if old is None else SMOOTHING * value + (1 - SMOOTHING) * old

    # --- estimates
    def score_seconds(self, lang: str, chars: int) -> float:
        per_char = self._char_s.get(lang)
        if per_char is None:
            per_char = (max(self._char_s.values()) if self._char_s else self._prior_token_s("score") / CHARS_PER_TOKEN)
        return per_char * chars

    def step_seconds(self, rows: int) -> float:
        if rows in self._step_s:
            return self._step_s[rows]
        above = [r for r in self._step_s if r >= rows]
        if above:  # a step of more rows costs at least as much: an upper bound
            return self._step_s[min(above)]
        if self._step_s:  # and one of fewer rows at most proportionally less
            top = max(self._step_s)
            return self._step_s[top] * rows / top
        return self._prior_step_s(rows)

    def prefill_seconds(self, tokens: int) -> float:
        return tokens * (self._prefill_s if self._prefill_s is not None else self._prior_token_s("prefill"))

    def reply_seconds(self, max_tokens: int, rows: int) -> float:
        """A reply of ``max_tokens`` drafted among ``rows`` running ones, with each of the others' prefills
        (joining the batch, prompts as long as the ones measured) stalling it once."""
        return max_tokens * self.step_seconds(rows) + rows * self.prefill_seconds(round(self._prompt_tokens))

    # --- sizing
    def claim_chars(self, lang: str, budget_s: float) -> int:
        """How many characters of ``lang`` (counted by :meth:`read_chars`) one sentiment task can score in ``budget_s``."""
        return int(budget_s / max(self.score_seconds(lang, 1), 1e-9))

    def reply_slots(self, most: int, max_tokens: int, budget_s: float) -> int:
        """The most replies drafted together (up to ``most``) for which a full-length one ends in ``budget_s``."""
        for rows in range(most, 1, -1):
            if self.reply_seconds(max_tokens, rows) <= budget_s:
                return rows
        return 1

    # --- priors from the probe
    def _prior_token_s(self, phase: str) -> float:
        plan = self._plan
        rows = getattr(plan, "rows", None)
        if not rows or not plan.layers:
            return FALLBACK_TOKEN_S
        kernel, m = (plan.score, rows.score) if phase == "score" else (plan.decode, rows.prefill)
        ms = plan.layer_ms(kernel, m) or plan.layer_ms(plan.dtype, m)
        return FALLBACK_TOKEN_S if ms is None else OVERHEAD * plan.layers * ms / 1000 / m

    def _prior_step_s(self, rows: int) -> float:
        plan = self._plan
        prior = getattr(plan, "rows", None)
        if not prior or not plan.layers:
            return FALLBACK_STEP_S
        m = prior.batch if rows > 1 else 1
        ms = plan.layer_ms(plan.decode, m) or plan.layer_ms(plan.dtype, m)
        return FALLBACK_STEP_S if ms is None else OVERHEAD * plan.layers * ms / 1000
