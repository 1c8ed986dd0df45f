"""Blind grading of drafted replies: could a desk lead send each one as it is?

The rules in worker/quality/substance.py are generous and can be gamed (bench/README.md: reply
demonstrations lifted "sendable by the rules" ~15 points while a blind reader found no change). This
script makes a packet a reader can grade without knowing which variant wrote which reply, then scores
the grades per variant.

  pack:  python bench/blind.py pack DIR base=a.jsonl demos=b.jsonl [--ids FILE] [--seed N]
         (files from `moodq eval FILE --replies --out ...`; only the ids in --ids, by default the 40
         messages of bench/data/desk_hand_grades.jsonl). Writes DIR/packet.jsonl (key, lang, customer
         message, drafted reply, shuffled), DIR/key.json (kept from the reader) and DIR/CRITERIA.md.
  grade: a reader (a person, or a separate session that sees only DIR/packet.jsonl and DIR/CRITERIA.md)
         writes DIR/grades.jsonl: {"key", "sendable", "why"} per line.
  score: python bench/blind.py score DIR [--save FILE]  (per variant: sendable of all, zh, en; --save
         appends round, id, lang, variant, reply, sendable, why to FILE, e.g. bench/data/desk_blind_grades.jsonl)
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CRITERIA = """\
Grade each drafted customer-service reply as a strict but fair desk lead: could it be sent AS IT IS,
without any edit? The same message may appear with several replies; grade each on its own.
Sendable only if all hold:
- it understands what the customer said (no misreading; it does not thank or sound glad about a complaint);
- for a complaint: it apologises or clearly acknowledges the problem and gives a sensible next step where
  one is needed (we will check / please send the order number when something was ordered / we will pass
  it to the manager);
- it invents no facts: no times, dates, delivery estimates, amounts, policies, product facts, contact
  details, no claim that an investigation was done or the problem is already solved;
- it promises no refund, compensation, vouchers or money, and does not blame the customer;
- it asks for no order number where nothing was ordered (dine-in, hotel staff, off-topic chat, reviews
  of a book or film, venting);
- it speaks as the agent (not as the customer, the author, an AI, or another named company), addresses
  the customer directly and leaks no instructions;
- it reads naturally: not garbled, no broken grammar, no rambling list, not the customer's message
  repeated back.
Generic but correct replies are sendable ("I'm so sorry to hear that. Could you tell us more so we can
help?" for vague anger). Write grades.jsonl: one {"key": ..., "sendable": true/false, "why": "<short
reason>"} per line, every key present.
"""


def _rows(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if r.get("reply")}


def pack(out: Path, variants: dict[str, Path], ids: list[str], seed: int) -> None:
    drafted = {name: _rows(path) for name, path in variants.items()}
    items = [(name, i) for i in ids for name in drafted if i in drafted[name]]
    random.Random(seed).shuffle(items)
    out.mkdir(parents=True, exist_ok=True)
    key = {}
    with (out / "packet.jsonl").open("w", encoding="utf-8") as f:
        for n, (name, i) in enumerate(items):
            row, k = drafted[name][i], f"r{n:03d}"
            key[k] = {"variant": name, "id": i, "lang": row["lang"], "reply": row["reply"]}
            f.write(json.dumps({"key": k, "lang": row["lang"], "customer_message": row["text"],
                                "drafted_reply": row["reply"]}, ensure_ascii=False) + "\n")
    (out / "key.json").write_text(json.dumps(key, ensure_ascii=False, indent=1), encoding="utf-8")
    (out / "CRITERIA.md").write_text(CRITERIA, encoding="utf-8")
    print(f"{len(items)} replies from {len(drafted)} variants in {out / 'packet.jsonl'}; "
          f"hand the reader packet.jsonl and CRITERIA.md only")


def score(out: Path, save: Path | None, tag: str = "") -> None:
    key = json.loads((out / "key.json").read_text(encoding="utf-8"))
    grades = [json.loads(line) for line in (out / "grades.jsonl").read_text(encoding="utf-8").splitlines() if line]
    missing = set(key) - {g["key"] for g in grades}
    if missing:
        raise SystemExit(f"{len(missing)} replies not graded, e.g. {sorted(missing)[:3]}")
    tally: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for g in grades:
        k = key[g["key"]]
        for lang in ("all", k["lang"]):
            tally[k["variant"]][lang].append(bool(g["sendable"]))
    for variant, by_lang in tally.items():
        print(f"{variant:>24}: " + ", ".join(f"{lang} {sum(v)} of {len(v)}" for lang, v in sorted(by_lang.items())))
    if save:
        with save.open("a", encoding="utf-8") as f:
            for g in grades:
                k = key[g["key"]]
                f.write(json.dumps({"round": tag or out.name, "id": k["id"], "lang": k["lang"],
                                    "variant": k["variant"], "reply": k["reply"],
                                    "sendable": bool(g["sendable"]), "why": g.get("why", "")}, ensure_ascii=False) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("dir", type=Path)
    p.add_argument("variants", nargs="+", help="name=file.jsonl (from moodq eval --replies --out)")
    p.add_argument("--ids", type=Path, default=ROOT / "bench/data/desk_hand_grades.jsonl")
    p.add_argument("--seed", type=int, default=7)
    s = sub.add_parser("score")
    s.add_argument("dir", type=Path)
    s.add_argument("--save", type=Path, default=None)
    s.add_argument("--tag", default="", help="the grading round saved with each grade (default: DIR's name)")
    args = ap.parse_args()
    if args.cmd == "pack":
        variants = dict(v.split("=", 1) for v in args.variants)
        ids = [json.loads(line)["id"] for line in args.ids.read_text(encoding="utf-8").splitlines() if line]
        pack(args.dir, {name: Path(path) for name, path in variants.items()}, ids, args.seed)
    else:
        score(args.dir, args.save, args.tag)


if __name__ == "__main__":
    main()
