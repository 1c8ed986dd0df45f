"""Which kernels may score labels: accuracy of each (dtype, scoring kernel) on both dev sets, one run.

For each path the configured model (MOODQ_MODEL, default the embedded 0.5B) is loaded once in the dtype, its Linear layers set to the scoring
kernel (worker.engine.kernels.apply: SCORE_FLOAT_LAYERS decoder layers at each end stay float, as the worker
runs them; --edges 0 puts every layer on the kernel, a path's own third field overrides it for that path,
as in float32:int8-fbgemm:0, and a fourth names the only Linear layers of those that stay float, as in
float32:int8-fbgemm:2:down_proj+o_proj), and both dev sets are labeled as `moodq eval`
labels them. A path may go into a prompt file's ``int8_scoring`` for that model (and, for the default prompts and
model, worker.engine.kernels.LABEL_SAFE) only if it stays within 1 point of float32 on both sets; the probe never
lets speed alone choose a scoring kernel.

Usage:  python bench/paths.py [--n 400] [--paths float32:float32,float32:int8-fbgemm,...] [--edges 1]
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
from worker.common.prompts import load_prompts  # noqa: E402
from worker.common.settings import load_settings  # noqa: E402
from worker.engine import kernels  # noqa: E402
from worker.engine.loading import load  # noqa: E402
from worker.engine.model import Engine  # noqa: E402
from worker.quality.evaluate import judge_all, languages, read_labeled  # noqa: E402

PATHS = ("float32:float32,float32:int8-fbgemm,float32:int8-intmm,float32:int8-onednn,bfloat16:int8-onednn,"
         "bfloat16:bfloat16,bfloat16:int8-fbgemm,bfloat16:int8-intmm")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="lines of each dev set")
    ap.add_argument("--paths", default=PATHS, help="comma list of dtype:scoring-kernel[:edges[:parts]]")
    ap.add_argument("--edges", type=int, default=kernels.SCORE_FLOAT_LAYERS,
                    help="decoder layers at each end that score in float when the kernel is int8")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(header())
    torch.set_num_threads(args.threads)
    sets = {name: read_labeled(DEV / f"{name}_dev.jsonl")[: args.n] for name in ("zh", "en")}
    reference: dict[str, list[str]] = {}
    # One cap for every path, so that each is compared with float32 reading the same tokens (a worker's own cap
    # follows its path: kernels.SCORE_MAX_TOKENS); MOODQ_SENTIMENT_MAX_TOKENS sets another.
    cap = load_settings().sentiment_max_tokens
    cap = kernels.DEFAULT_SCORE_MAX_TOKENS if cap is None else cap
    print(f"each message read up to {cap} tokens (MOODQ_SENTIMENT_MAX_TOKENS)")
    print(f"{'dtype:scoring kernel':<26}{'set':>4}{'acc':>8}{'vs float32':>12}{'agree w/ fp32':>15}{'msg/s':>8}")
    for spec in args.paths.split(","):
        dtype, kernel, *edges = spec.split(":")
        kernels.SCORE_FLOAT_LAYERS = int(edges[0]) if edges else args.edges
        kernels.SCORE_FLOAT_PARTS = tuple(edges[1].split("+")) if len(edges) > 1 else ()
        settings = load_settings(dtype=dtype, quant="none", threads=args.threads)
        loaded = load(settings)
        swapped = kernels.apply(loaded.model, dtype, kernel, dtype)
        assert kernel == dtype or swapped, "no layer was swapped: the comparison would prove nothing"
        # The prompt prefixes' KV caches on disk are keyed by the plan loaded (float here), not by the kernel swapped
        # in: read from there, one path would score on prefixes another path computed. Each computes its own.
        loaded.prefix_folder = None
        eng = Engine(loaded, load_prompts(settings.prompts), max_text_tokens=cap)
        for name, rows in sets.items():
            langs = languages(eng, rows)
            judge_all(eng, rows[:16], langs[:16], batch_size=settings.sentiment_batch_size)  # warm-up
            t0 = time.perf_counter()
            labels = [j.label for j in judge_all(eng, rows, langs, batch_size=settings.sentiment_batch_size)]
            rate = len(rows) / (time.perf_counter() - t0)
            acc = sum(lab == r["label"] for lab, r in zip(labels, rows)) / len(rows)
            if spec == "float32:float32":
                reference[name] = (labels, acc)
            base = reference.get(name)
            agree = f"{sum(a == b for a, b in zip(labels, base[0])) / len(rows):.1%}" if base else "-"
            delta = f"{(acc - base[1]) * 100:+.1f} pt" if base else "-"
            print(f"{spec:<26}{name:>4}{acc:>8.3f}{delta:>12}{agree:>15}{rate:>8.1f}", flush=True)
        del eng, loaded
        gc.collect()


if __name__ == "__main__":
    main()
