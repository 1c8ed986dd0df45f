"""Compute paths side by side, one run: sentiment accuracy, label agreement with float32, msg/s.

For each path (MOODQ_DTYPE x MOODQ_QUANT) the embedded model is loaded once and both dev sets
are labeled as `moodq eval` labels them (claims of 64, length buckets of MOODQ_SENTIMENT_BATCH_SIZE).
A path may become a default only if it stays within 1 point of float32 on both sets.

Usage:  python bench/paths.py [--n 400] [--paths float32/none,float32/int8,bfloat16/none,...]
        (float32/int8:down_proj = int8 scoring with every down_proj kept float)
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.common import DEV, header  # noqa: E402
from worker.evaluate import judge_all, languages, read_labeled  # noqa: E402
from worker.loading import load  # noqa: E402
from worker.model import Engine  # noqa: E402
from worker.prompts import load_prompts  # noqa: E402
from worker.quant import quantize  # noqa: E402
from worker.settings import load_settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="lines of each dev set")
    ap.add_argument("--paths", default="float32/none,float32/int8,bfloat16/none,bfloat16/int8")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(header())
    torch.set_num_threads(args.threads)
    sets = {name: read_labeled(DEV / f"{name}_dev.jsonl")[: args.n] for name in ("zh", "en")}
    reference: dict[str, list[str]] = {}
    print(f"{'path':<34}{'set':>4}{'acc':>8}{'agree w/ fp32':>15}{'msg/s':>8}")
    for spec in args.paths.split(","):
        dtype, quant = spec.split("/")
        quant, _, keep = quant.partition(":")  # e.g. int8:down_proj keeps down_proj float for scoring
        settings = load_settings(dtype=dtype, quant="none" if keep else quant, threads=args.threads)
        loaded = load(settings)
        if keep:
            quantize(loaded.model, quant, keep_float=tuple(keep.split("+")))
            loaded.path = f"{loaded.path}+{quant} ({keep} float)"
        eng = Engine(loaded, load_prompts(settings.prompts), max_text_tokens=settings.sentiment_max_tokens)
        for name, rows in sets.items():
            langs = languages(eng, rows)
            judge_all(eng, rows[:16], langs[:16], batch_size=settings.sentiment_batch_size)  # warm-up
            t0 = time.perf_counter()
            labels = [j.label for j in judge_all(eng, rows, langs, batch_size=settings.sentiment_batch_size)]
            rate = len(rows) / (time.perf_counter() - t0)
            acc = sum(lab == r["label"] for lab, r in zip(labels, rows)) / len(rows)
            if spec == "float32/none":
                reference[name] = labels
            agree = (f"{sum(a == b for a, b in zip(labels, reference[name])) / len(rows):.1%}"
                     if name in reference else "-")
            print(f"{str(loaded.path):<34}{name:>4}{acc:>8.3f}{agree:>15}{rate:>8.1f}", flush=True)
        del eng, loaded
        gc.collect()


if __name__ == "__main__":
    main()
