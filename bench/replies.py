"""Reply drafting throughput per compute path: one at a time vs batched, same run, same messages.

For each MOODQ_QUANT value in --quant the model is loaded once (dtype from --dtype, default
auto) and the same replies are drafted one at a time and in batches of each --batch size.
The last line gives every path's tokens/s at the largest batch as a ratio to the first path's.

Usage:  python bench/replies.py --n 16 --batch 1,8 --tokens 48 [--dtype float32] [--quant none,auto]
(each MOODQ_QUANT value runs the kernels the probe picks for it on this host: none = float only;
 a value dtype:quant sets MOODQ_DTYPE too, e.g. --quant float32:none,auto:auto for float32 vs the default.)
--method continuous,bucketed also drafts every batch the way moodq did before continuous batching
(transformers' ``generate`` over length buckets, no system-prompt cache; kept here as the reference),
on the same loaded model, and prints the ratio. "continuous" drafts each batch of b as one reply task
does; "refill" gives all messages to one call with b slots (a finished reply's slot takes the next).
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.common import DEV, header, peak_rss_mb  # noqa: E402
from worker.common.prompts import load_prompts  # noqa: E402
from worker.common.settings import load_settings  # noqa: E402
from worker.engine.batching import buckets  # noqa: E402
from worker.engine.drafting import Draft  # noqa: E402
from worker.engine.kernels import decoding  # noqa: E402
from worker.engine.loading import load  # noqa: E402
from worker.engine.model import Engine  # noqa: E402
from worker.quality.evaluate import read_labeled  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEV / "zh_dev.jsonl"))
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch", default="1,8", help="comma list of batch sizes")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--quant", default="none,auto", help="comma list of MOODQ_QUANT values")
    ap.add_argument("--greedy", action="store_true", help="greedy first drafts whatever MOODQ_TEMPERATURE says "
                    "(the default since 2026-12-01; older commands in bench/README.md pass it)")
    ap.add_argument("--redraft", action="store_true", help="pick tokens as redrafts do (sampled at "
                    "MOODQ_REDRAFT_TEMPERATURE) instead of as first drafts do (greedy by default)")
    ap.add_argument("--method", default="continuous", help="comma list: continuous (moodq), refill, bucketed (before)")
    args = ap.parse_args()
    print(header())
    batches = [int(b) for b in args.batch.split(",")]
    at_max: dict[str, float] = {}
    for spec in args.quant.split(","):
        dtype, quant = spec.split(":") if ":" in spec else (args.dtype, spec)  # e.g. float32:none,auto:auto
        settings = load_settings(threads=2, dtype=dtype, quant=quant, **({"temperature": 0.0} if args.greedy else {}))
        loaded = load(settings)
        eng = Engine(loaded, load_prompts(settings.prompts), max_text_tokens=settings.sentiment_max_tokens)
        rows = read_labeled(Path(args.data))[: args.n]
        items = [(r["text"][:300], r["label"], eng.prompts.language_of(r["text"]), []) for r in rows]
        sampling = settings.sampling(redraft=args.redraft)
        common = {"max_new_tokens": args.tokens, "deadline_s": 600, "sampling": sampling}
        eng.draft_many(items[:2], **{**common, "max_new_tokens": 4})  # warm-up
        print(f"\n{args.n} replies, up to {args.tokens} tokens, {sampling}, path {eng.path}")
        for b in batches:
            for method in args.method.split(","):
                draft = eng.draft_many if method == "continuous" else functools.partial(bucketed, eng)
                t0, drafts = time.perf_counter(), []
                if method == "refill":  # every item in one call, b slots: a freed slot takes the next message
                    drafts = eng.draft_many(items, slots=b, **common)
                for start in range(0, len(items), b) if method != "refill" else ():
                    drafts += draft(items[start:start + b], **common)
                secs = time.perf_counter() - t0
                made = sum(d.tokens for d in drafts)
                print(f"  batch {b:>3} {method:>10}: {made} tokens in {secs:.1f} s = {made / secs:.1f} tok/s, "
                      f"{args.n / secs:.2f} replies/s; ended at end of turn {sum(not d.truncated for d in drafts)}/"
                      f"{args.n}", flush=True)
                at_max[f"{eng.path} {method}"] = made / secs
        print("  e.g.", drafts[0].text.replace("\n", " ")[:120])
        del eng, loaded
        gc.collect()
    first = next(iter(at_max.values()))
    print(f"\nbatch {batches[-1]} tok/s vs {next(iter(at_max))}: "
          + ", ".join(f"{p} {v / first:.2f}x" for p, v in at_max.items()) + f"; peak RSS {peak_rss_mb():.0f} MB")


def bucketed(eng: Engine, items: list, *, max_new_tokens: int, deadline_s: float, sampling: dict) -> list[Draft]:
    """moodq's drafting before continuous batching (to 2026-11-24): left-padded ``generate`` per bucket
    of similar prompt length (longest <= 1.5 x shortest + 32), the whole prompt prefilled every time."""
    chat, tok = eng.chat, eng.tok
    prompts = [chat.reply_prompt(*item) for item in items]
    drafts: list[Draft | None] = [None] * len(items)
    for group in buckets(prompts, len(prompts), slack=1.5, extra=32):
        batch = tok.pad({"input_ids": [prompts[i] for i in group]}, padding_side="left", return_tensors="pt")
        with torch.inference_mode(), decoding():
            out = eng.model.generate(**batch, max_new_tokens=max_new_tokens, max_time=deadline_s,
                                     eos_token_id=eng.drafter.stops, pad_token_id=tok.pad_token_id,
                                     bad_words_ids=eng.drafter.bad_words, **sampling)
        for i, row in zip(group, out[:, batch["input_ids"].shape[1]:].tolist()):
            ended = next((k for k, t in enumerate(row) if t in eng.drafter.stops), None)
            new = row[:ended] if ended is not None else row
            text = chat.opening(*items[i][1:3]) + tok.decode(new, skip_special_tokens=True)
            drafts[i] = Draft(text.strip(), truncated=ended is None, tokens=len(new))
    return drafts


if __name__ == "__main__":
    main()
