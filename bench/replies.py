"""Reply drafting throughput: one at a time vs batched (left-padded generate), same run, same model.

Usage:  python bench/replies.py --n 16 --batch 8 --tokens 48
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import peak_rss_mb  # noqa: E402
from worker.evaluate import read_labeled  # noqa: E402
from worker.resident import engine as resident  # noqa: E402
from worker.settings import load_settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/zh_dev.jsonl"))
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    args = ap.parse_args()
    settings = load_settings(threads=2)
    eng = resident(settings)
    rows = read_labeled(Path(args.data))[: args.n]
    items = [(r["text"][:300], r["label"], eng.prompts.language_of(r["text"]), []) for r in rows]
    common = {"max_new_tokens": args.tokens, "deadline_s": 600, "sampling": settings.sampling()}

    def timed(batch: int):
        t0, drafts = time.perf_counter(), []
        for start in range(0, len(items), batch):
            drafts += eng.draft_many(items[start:start + batch], **common)
        return time.perf_counter() - t0, drafts

    one_s, one = timed(1)
    many_s, many = timed(args.batch)
    tok1, tokb = sum(d.tokens for d in one), sum(d.tokens for d in many)
    print(f"{args.n} replies (up to {args.tokens} tokens, sampling {settings.sampling()}) on {eng.model_id}")
    print(f"one at a time : {tok1} tokens in {one_s:.1f} s = {tok1 / one_s:.1f} tok/s, {args.n / one_s:.2f} replies/s")
    print(f"batches of {args.batch:<3}: {tokb} tokens in {many_s:.1f} s = {tokb / many_s:.1f} tok/s, "
          f"{args.n / many_s:.2f} replies/s")
    print(f"ratio batched/one: {(tokb / many_s) / (tok1 / one_s):.1f}x tokens/s; "
          f"stopped at end of turn: {sum(not d.truncated for d in many)}/{args.n}; peak RSS {peak_rss_mb():.0f} MB")
    for d in many[:3]:
        print("  e.g.", d.text.replace("\n", " ")[:120])


if __name__ == "__main__":
    main()
