"""Sentiment throughput and accuracy: the seed documents' method vs moodq's scoring path, one run.

  (a) seed: chat template with the "cold analyst" system prompt, greedy generate of up to
      10 tokens, parse the label word out of the text; on its own float32 copy of the model
      (--seed-dtype), as the seed documents ran it;
  (b) moodq: label scoring on the cached prefix, one message at a time, on the worker's path
      (MOODQ_DTYPE / MOODQ_QUANT, default auto);
  (c) moodq: the same, batched the way a worker does it: it takes a claim of messages
      (MOODQ_CLAIM_SIZE, 64) and scores them in length-sorted passes of MOODQ_SENTIMENT_BATCH_SIZE (16).

Same model object, same messages. Usage:
  python bench/sentiment.py --data ../shared/data/zh_dev.jsonl --n 128
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

from bench.common import peak_rss_mb, percentiles  # noqa: E402
from worker.common.prompts import load_prompts  # noqa: E402
from worker.common.settings import load_settings  # noqa: E402
from worker.engine.loading import load  # noqa: E402
from worker.engine.model import Engine  # noqa: E402
from worker.jobs.resident import engine as resident  # noqa: E402
from worker.quality.evaluate import read_labeled  # noqa: E402


def seed_label(eng, text: str, lang: str) -> str | None:
    conf = eng.prompts.languages[lang].sentiment
    chat = [{"role": "system", "content": conf.system}, {"role": "user", "content": text}]
    ids = eng.tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = eng.model.generate(**ids, max_new_tokens=10, do_sample=False, pad_token_id=eng.tok.pad_token_id)
    answer = eng.tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).lower()
    found = [label for label, word in conf.label_words.items() if word.lower() in answer]
    return found[0] if len(found) == 1 else None


def run(name: str, rows: list[dict], lang: str, fn, batch: int = 1) -> dict:
    latencies, labels = [], []
    started = time.perf_counter()
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        t0 = time.perf_counter()
        labels += fn([r["text"] for r in chunk])
        latencies += [time.perf_counter() - t0] * len(chunk)
    wall = time.perf_counter() - started
    valid = [lab is not None for lab in labels]
    correct = [lab == r["label"] for lab, r in zip(labels, rows)]
    p50, p95 = percentiles(latencies)
    return {"name": name, "msg_s": len(rows) / wall, "p50": p50, "p95": p95,
            "valid": sum(valid) / len(rows), "acc": sum(correct) / len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/zh_dev.jsonl"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch", type=int, default=16, help="messages per forward pass")
    ap.add_argument("--claim", type=int, default=64, help="messages taken together, sorted into passes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed-dtype", default="float32", help="weights of the seed method's model (default float32, as "
                    "the seed documents ran it)")
    args = ap.parse_args()
    from bench.common import header

    print(header())

    # Each side runs with only its own model in memory, as a worker process holds one: with both copies resident
    # (7 GB), moodq's claims ran 10-20 % slower on the AVX2-only EPYC than in a process of their own.
    settings = load_settings(threads=args.threads)
    prompts = load_prompts(settings.prompts)
    rows = read_labeled(Path(args.data))[: args.n]
    lang = prompts.language_of(rows[0]["text"])
    print(f"{len(rows)} messages from {args.data} (lang {lang})")

    # The seed documents ran the model as loaded, in float32, with no int8 anywhere.
    seed_eng = Engine(load(load_settings(threads=args.threads, dtype=args.seed_dtype, quant="none")), prompts)
    results = [run(f"a seed: generate+parse ({args.seed_dtype})", rows, lang,
                   lambda ts: [seed_label(seed_eng, t, lang) for t in ts])]
    seed_eng = None  # freed before moodq loads
    gc.collect()

    t0 = time.perf_counter()
    eng = resident(settings)
    print(f"model {eng.model_id} ({eng.path}, {torch.get_num_threads()} threads) ready in "
          f"{time.perf_counter() - t0:.1f} s; prompts {eng.prompts.version}; reads up to "
          f"{eng.scorer.max_text_tokens} tokens of a message\n")
    results += [
        run("b moodq: scoring, 1 at a time", rows, lang, lambda ts: [j.label for j in eng.judge(ts, lang)]),
        run(f"c moodq: {args.claim} in passes of {args.batch}", rows, lang,
            lambda ts: [j.label for j in eng.judge(ts, lang, max_batch=args.batch)], batch=args.claim),
    ]
    print(f"{'method':<34}{'msg/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'valid':>8}{'acc':>7}")
    for r in results:
        print(f"{r['name']:<34}{r['msg_s']:>8.2f}{r['p50']:>9.0f}{r['p95']:>9.0f}{r['valid']:>8.1%}{r['acc']:>7.3f}")
    seed = results[0]["msg_s"]
    print(f"\nratio b/a {results[1]['msg_s'] / seed:.1f}x   ratio c/a {results[2]['msg_s'] / seed:.1f}x   "
          f"peak RSS {peak_rss_mb():.0f} MB (the seed's model freed before moodq's loaded)")


if __name__ == "__main__":
    main()
