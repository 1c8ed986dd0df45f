"""Accuracy of the sentiment path on a labeled JSONL file, through the worker's own code."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from worker.common.errors import BadMessage
from worker.engine.model import Engine, Judgement


@dataclass
class Report:
    n: int
    accuracy: float
    invalid_label_rate: float
    per_class: dict[str, dict[str, float]]
    confusion: dict[str, dict[str, int]]  # gold -> predicted -> count
    messages_per_s: float
    seconds: float
    calibrated: dict[str, bool]  # per language: was calibration applied
    prompt_version: str
    model: str

    def as_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)

    def as_text(self) -> str:
        labels = list(self.confusion)
        lines = [
            f"model {self.model}  prompts {self.prompt_version}  calibrated={self.calibrated}",
            f"messages {self.n}  accuracy {self.accuracy:.3f}  invalid labels {self.invalid_label_rate:.3f}"
            f"  {self.messages_per_s:.1f} msg/s ({self.seconds:.1f} s)",
            "",
            f"{'class':<12}{'precision':>10}{'recall':>10}{'support':>9}",
        ]
        for lab, m in self.per_class.items():
            lines.append(f"{lab:<12}{m['precision']:>10.3f}{m['recall']:>10.3f}{int(m['support']):>9}")
        lines += ["", "confusion (rows gold, columns predicted)", " " * 12 + "".join(f"{p:>10}" for p in labels)]
        for gold in labels:
            lines.append(f"{gold:<12}" + "".join(f"{self.confusion[gold][p]:>10}" for p in labels))
        return "\n".join(lines)


def read_labeled(path: Path, need_label: bool = True) -> list[dict]:
    """JSONL rows with a string ``text`` and a gold ``label`` (optional with ``need_label=False``)."""
    rows = []
    for no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            label_ok = isinstance(row.get("label"), str) or (not need_label and row.get("label") is None)
            if not isinstance(row.get("text"), str) or not label_ok:
                raise ValueError("needs string fields 'text' and 'label'" if need_label
                                 else "needs a string field 'text' (and 'label', if any, a string)")
        except ValueError as exc:
            raise BadMessage(f"{path}:{no}: {exc}") from None
        rows.append(row)
    return rows


def languages(engine: Engine, rows: list[dict], lang: str | None = None) -> list[str]:
    """The prompt language of every row: forced, the row's own ``lang``, or detected."""
    try:
        return [engine.prompts.language_of(r["text"], lang or r.get("lang")) for r in rows]
    except KeyError as exc:
        raise BadMessage(f"no prompts for language {exc.args[0]!r}") from None


def judge_all(engine: Engine, rows: list[dict], langs: list[str], *, batch_size: int, calibrate: bool | None = None,
              progress: Callable[[int], None] | None = None) -> list[Judgement]:
    """Label every row as a worker would: per language, claims of 64 scored in length buckets."""
    out: list[Judgement | None] = [None] * len(rows)
    chunk = 64  # the engine buckets by length inside each chunk
    for code in dict.fromkeys(langs):
        idx = [i for i in range(len(rows)) if langs[i] == code]
        for start in range(0, len(idx), chunk):
            part = idx[start:start + chunk]
            for i, j in zip(part, engine.judge([rows[i]["text"] for i in part], code, calibrate, batch_size)):
                out[i] = j
            if progress:
                progress(len(part))
    return out


def evaluate(engine: Engine, rows: list[dict], *, batch_size: int = 8, calibrate: bool | None = None,
             lang: str | None = None, progress: Callable[[int], None] | None = None) -> Report:
    labels = engine.labels
    rows = [r for r in rows if r.get("label") is not None]  # accuracy over the lines that have a gold label
    unknown = {r["label"] for r in rows} - set(labels)
    if unknown:
        raise BadMessage(f"gold labels {sorted(unknown)} are not in the prompt's label set {labels}")
    started = time.perf_counter()
    langs = languages(engine, rows, lang)
    predicted = [j.label for j in judge_all(engine, rows, langs, batch_size=batch_size, calibrate=calibrate,
                                            progress=progress)]
    seconds = time.perf_counter() - started
    gold = [r["label"] for r in rows]
    pairs = Counter(zip(gold, predicted))
    confusion = {g: {p: pairs[(g, p)] for p in labels} for g in labels}
    per_class = {}
    for lab in labels:
        tp = pairs[(lab, lab)]
        pred_n = sum(pairs[(g, lab)] for g in labels)
        gold_n = sum(pairs[(lab, p)] for p in labels)
        per_class[lab] = {"precision": tp / pred_n if pred_n else 0.0,
                          "recall": tp / gold_n if gold_n else 0.0, "support": gold_n}
    n = len(rows)
    return Report(
        n=n, accuracy=sum(pairs[(lab, lab)] for lab in labels) / n if n else 0.0,
        invalid_label_rate=sum(p not in labels for p in predicted) / n if n else 0.0,
        per_class=per_class, confusion=confusion, messages_per_s=n / seconds if seconds else 0.0,
        seconds=seconds, calibrated={code: engine.prompts.languages[code].sentiment.calibration if calibrate is None
                                       else calibrate for code in dict.fromkeys(langs)}, prompt_version=engine.prompts.version, model=engine.model_id,
    )
