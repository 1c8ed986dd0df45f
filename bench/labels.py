"""Label sets compared on one loaded model: accuracy on the binary dev sets and on neutral questions.

For each prompt file the same lines are labeled through the worker's scoring path: the first --n
lines of zh_dev and en_dev (gold positive/negative: a "neutral" answer counts as wrong) and every
line of bench/data/neutral_questions.jsonl (customer questions written for this, gold neutral).

Usage:  python bench/labels.py prompts/default.yaml prompts/three-labels.yaml [--n 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import DEV, header  # noqa: E402
from worker.common.prompts import load_prompts  # noqa: E402
from worker.common.settings import load_settings  # noqa: E402
from worker.engine.loading import load  # noqa: E402
from worker.engine.model import Engine  # noqa: E402
from worker.quality.evaluate import read_labeled  # noqa: E402

NEUTRAL = Path(__file__).resolve().parent / "data" / "neutral_questions.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompts", nargs="+", type=Path)
    ap.add_argument("--n", type=int, default=200, help="lines of each dev set")
    ap.add_argument("--quant", default="auto", help="MOODQ_QUANT for the loaded model (none: float scoring)")
    args = ap.parse_args()
    print(header())
    settings = load_settings(threads=2, quant=args.quant)
    loaded = load(settings)
    sets = {"zh_dev": read_labeled(DEV / "zh_dev.jsonl")[: args.n], "en_dev": read_labeled(DEV / "en_dev.jsonl")[: args.n],
            "neutral": read_labeled(NEUTRAL)}
    print(f"model {loaded.model_id}, path {loaded.plan}; {args.n} lines per dev set, {len(sets['neutral'])} neutral questions")
    for file in args.prompts:
        eng = Engine(loaded, load_prompts(file), max_text_tokens=settings.sentiment_max_tokens)
        print(f"\n{file} ({eng.prompts.version}), labels {eng.labels}")
        for name, rows in sets.items():
            by_lang: dict[str, list[dict]] = {}
            for r in rows:
                by_lang.setdefault(eng.prompts.language_of(r["text"]), []).append(r)
            for lang, part in by_lang.items():
                t0 = time.perf_counter()
                got = [j.label for j in eng.judge([r["text"] for r in part], lang)]
                secs = time.perf_counter() - t0
                acc = sum(g == r["label"] for g, r in zip(got, part)) / len(part)
                counts = Counter(got)
                print(f"  {name:>8} {lang}: accuracy {acc:.3f} on {len(part)}; answered "
                      + ", ".join(f"{lab} {counts[lab]}" for lab in eng.labels) + f"; {len(part) / secs:.1f} msg/s")


if __name__ == "__main__":
    main()
