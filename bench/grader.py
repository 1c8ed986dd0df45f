"""How far the reply measures agree with a person: the rules (form + substance) and the opt-in model grader
against hand grades of 40 drafted replies (bench/data/desk_hand_grades.jsonl, graded by reading each reply
as a desk lead would: could it be sent as it is?).

Usage:  python bench/grader.py [--judge embedded-large] [--no-judge]
(the judge needs `pip install -e '.[large]'`; --judge takes any MOODQ_MODEL value)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from worker.common.prompts import load_prompts  # noqa: E402
from worker.common.settings import PROMPTS_FILE  # noqa: E402
from worker.quality import reply_checks, substance  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"


def agreement(name: str, predicted: list[bool], hand: list[bool]) -> str:
    both = list(zip(predicted, hand))
    same = sum(p == h for p, h in both)
    tp = sum(p and h for p, h in both)
    fp = sum(p and not h for p, h in both)
    fn = sum(h and not p for p, h in both)
    return (f"{name:<28} agrees on {same}/{len(both)} ({same / len(both):.0%}); says sendable {sum(predicted)} "
            f"(hand: {sum(hand)}); sendable by both {tp}, only by it {fp}, only by hand {fn}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--judge", default="embedded-large", help="MOODQ_MODEL of the grader")
    ap.add_argument("--no-judge", action="store_true", help="rules only")
    args = ap.parse_args()
    items = {json.loads(line)["id"]: json.loads(line) for line in (DATA / "desk_graded.jsonl").open(encoding="utf-8")}
    graded = [json.loads(line) for line in (DATA / "desk_hand_grades.jsonl").open(encoding="utf-8")]
    prompts = load_prompts(PROMPTS_FILE)
    hand = [g["sendable"] for g in graded]
    rules = []
    for g in graded:
        item = items[g["id"]]
        opening = prompts.languages[item["lang"]].reply.openings.get(g["label"], "")
        form = reply_checks.flags(g["reply"], item["text"], item["lang"], opening=opening)
        rules.append(substance.sendable(form, substance.misses(g["reply"], item)))
    print(f"{len(graded)} hand-graded replies ({sum(g['lang'] == 'zh' for g in graded)} zh), "
          f"{sum(hand)} sendable by hand")
    print(agreement("rules (form + substance)", rules, hand))
    if args.no_judge:
        return
    from worker.quality.grader import Grader

    grader = Grader(args.judge)
    p = grader.sendable([(items[g["id"]]["text"], g["reply"], items[g["id"]]["lang"]) for g in graded])
    print(agreement(f"judge {args.judge} (p >= 0.5)", [x >= 0.5 for x in p], hand))
    best = max((sum((x >= t) == h for x, h in zip(p, hand)), t) for t in sorted(set(p)))
    print(f"  (the best threshold on these same 40, {best[1]:.2f}, would agree on {best[0]}: fitted, not held out)")


if __name__ == "__main__":
    main()
