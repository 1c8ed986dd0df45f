"""Conversation replies: how often the reply to turn 2 copies the reply to turn 1.

The dev sets have no conversations, so this builds two-turn ones from consecutive dev lines (turn 1
and turn 2 of the same customer), drafts turn 1's reply, then turn 2's with turn 1 and its reply as
history, as a worker does (shipped prompts and drafting, int8-decode where that is the path; the dev
set's gold label stands for the model's, with no confidence, so never the unsure tone).
A turn-2 reply "copies" when it shares a run of --span tokens or more with turn 1's reply, the
opening excluded; the longest shared run is reported too.

Usage:  python bench/conversations.py [--pairs 24] [--span 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import DEV, header  # noqa: E402
from worker.common.settings import load_settings  # noqa: E402
from worker.jobs.resident import engine as resident  # noqa: E402
from worker.quality.evaluate import read_labeled  # noqa: E402


def longest_shared_run(a: list[int], b: list[int]) -> int:
    """Length of the longest run of tokens that appears in both (dynamic programming, small inputs)."""
    best, prev = 0, [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--span", type=int, default=8)
    ap.add_argument("--without-earlier-replies", action="store_true",
                    help="Baseline: turn 2 sees turn 1's message but not its reply (what overlap generic phrasing alone gives).")
    args = ap.parse_args()
    print(header())
    settings = load_settings(threads=2)
    eng = resident(settings)
    opts = settings.draft_options()
    print(f"path {eng.path}, prompts {eng.prompts.version}, sampling {opts['sampling']}")
    for lang in ("zh", "en"):
        rows = read_labeled(DEV / f"{lang}_dev.jsonl")[: 2 * args.pairs]
        first, second = rows[0::2], rows[1::2]
        items = [(r["text"][:300], r["label"], lang, []) for r in first]
        replies = [d.text for start in range(0, len(items), 8)
                   for d in eng.draft_many(items[start:start + 8], **opts)]
        runs, examples = [], []
        for t1, r1, t2 in zip(first, replies, second):
            shown = None if args.without_earlier_replies else r1
            r2 = eng.draft(t2["text"][:300], t2["label"], lang, [(t1["text"][:300], shown)], **opts).text
            strip = lambda r, label: r.removeprefix(eng.chat.opening(label, lang))  # noqa: E731
            run = longest_shared_run(eng.chat.encode(strip(r1, t1["label"])), eng.chat.encode(strip(r2, t2["label"])))
            runs.append(run)
            if run >= args.span and len(examples) < 2:
                examples.append((r1, r2))
        copies = sum(r >= args.span for r in runs)
        print(f"{lang}: {len(runs)} two-turn conversations; turn-2 reply shares >= {args.span} tokens in a row with "
              f"turn 1's: {copies}/{len(runs)} ({copies / len(runs):.0%}); longest shared run median "
              f"{statistics.median(runs):.0f}, max {max(runs)}")
        for r1, r2 in examples:
            print(f"   turn 1: {r1[:90]}\n   turn 2: {r2[:90]}")


if __name__ == "__main__":
    main()
