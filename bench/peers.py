"""moodq's torch path against the engines a user would pick instead, same GGUF, same host, one run.

  llama.cpp  (llama-cpp-python, built from its PyPI source) on the embedded GGUF as it is;
  CTranslate2 int8, converted from the transformers weights moodq caches.

Same prompt tokens for everyone (moodq's cached prefix + message + cue). Scoring = one forward
pass and the logits of the label tokens; replies = greedy, up to --tokens tokens, at batch 1 and
--batch (llama-cpp-python's API has no batched generation: only batch 1 there).

Bench-only extras, never in the product's install:
  pip install -r bench/requirements-peers.txt     (the llama.cpp build takes ~5 min on 2 cores)
Usage:  python bench/peers.py [--n 64] [--tokens 48] [--batch 8]

On a CPU with AMX, llama.cpp built for the host (its default) runs its AMX kernels, and those segfaulted on the
first batched eval on both AMX Xeons measured here (ggml-org/llama.cpp#20824). This script then skips llama.cpp
and prints how to rebuild it without them (--llama-amx runs it anyway). pip caches the wheel it built: a rebuild
with other CMAKE_ARGS needs --no-cache-dir, or it silently reinstalls the same build.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import DEV, header  # noqa: E402
from worker.common.settings import load_settings  # noqa: E402
from worker.engine import converting, embedded  # noqa: E402
from worker.jobs.resident import engine as resident  # noqa: E402
from worker.quality.evaluate import read_labeled  # noqa: E402


def prompts(eng, rows, lang):
    """Token ids per message (prefix excluded), the prefix, and the first token of each label.

    A long message is read as moodq reads it: its opening and its ending (until 2026-11-24 this
    took the first tokens only, so the peers never saw the endings of long reviews)."""
    from worker.engine.batching import head_and_tail

    plan = eng.scorer.frames[lang]
    texts = [head_and_tail(eng.chat.encode(eng.chat.clean(r["text"])), eng.scorer.max_text_tokens) + plan.suffix_ids
             for r in rows]
    return plan.prefix_ids, texts, [ids[0] for ids in plan.label_ids]


def row(name, n, seconds, labels, gold):
    acc = sum(a == b for a, b in zip(labels, gold)) / len(gold)
    print(f"  {name:<44}{n / seconds:>8.1f} msg/s   acc {acc:.3f}", flush=True)
    return n / seconds


NO_AMX = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON "
          "-DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF "
          "-DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF")


def llama_amx() -> bool:
    """Whether this llama.cpp build runs its AMX kernels (`AMX_INT8 = 1` in its system info)."""
    import llama_cpp

    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


def llama_cpp(gguf, prefix, texts, label_tok, reply_prompts, tokens, threads):
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=4096, n_threads=threads, n_threads_batch=threads, n_batch=512,
                verbose=False)
    llm.eval(prefix)
    labels = []
    t0 = time.perf_counter()
    for ids in texts:
        llm.n_tokens = len(prefix)  # keep the prefix's KV cache, drop the previous message
        llm.eval(ids)
        # The last position's logits straight from the context: without logits_all, llama-cpp-python
        # 0.3.x no longer copies them into llm.scores (reading llm.scores gave stale rows: acc 0.55).
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
        labels.append(int(np.argmax([logits[t] for t in label_tok])))
    score_s = time.perf_counter() - t0
    made, t0 = 0, time.perf_counter()
    for p in reply_prompts:
        out = llm.create_completion(prompt=p, max_tokens=tokens, temperature=0.0, top_k=1)
        made += out["usage"]["completion_tokens"]
    return labels, score_s, made / (time.perf_counter() - t0)


def llama_cpp_rows(gguf, prefix, texts, label_tok, reply_prompts, gold, args) -> tuple[float, float]:
    """llama.cpp's figures, printed as moodq's are: (scoring msg/s, reply tok/s)."""
    labels, secs, tps = llama_cpp(gguf, prefix, texts, label_tok, reply_prompts, args.tokens, args.threads)
    rate = row("scoring, one at a time (prefix KV kept)", len(gold), secs, labels, gold)
    print(f"  replies, batch 1{'':<36}{tps:>8.1f} tok/s   (no batched generation in this API)", flush=True)
    return rate, tps


def ctranslate2_int8(converted, tok, prefix, texts, label_tok, reply_prompts, tokens, batch, threads):
    import ctranslate2

    out_dir = Path(tempfile.gettempdir()) / "moodq-ct2-int8"
    t0 = time.perf_counter()
    if not (out_dir / "model.bin").exists():
        ctranslate2.converters.TransformersConverter(str(converted)).convert(str(out_dir), quantization="int8",
                                                                            force=True)
    print(f"  (CTranslate2 conversion {time.perf_counter() - t0:.0f} s)")
    gen = ctranslate2.Generator(str(out_dir), device="cpu", compute_type="int8", intra_threads=threads)
    as_tokens = tok.convert_ids_to_tokens
    static = as_tokens(prefix)
    labels = []
    t0 = time.perf_counter()
    # One prompt per call: batches of prompts of different lengths gave wrong logits with a static prompt
    # (16 zh lines: 16/16 labels as moodq's one at a time, 8/16 in one batch), which is what made
    # CT2's accuracy 0.52 before 2026-11-24.
    for ids in texts:
        r = gen.generate_batch([as_tokens(ids)], static_prompt=static, max_length=1, sampling_topk=1,
                               return_logits_vocab=True, include_prompt_in_result=False)[0]
        logits = np.asarray(r.logits[0]).reshape(-1)
        labels.append(int(np.argmax([logits[t] for t in label_tok])))
    score_s = time.perf_counter() - t0
    rates = {}
    for b in (1, batch):
        made, t0 = 0, time.perf_counter()
        for start in range(0, len(reply_prompts), b):
            res = gen.generate_batch([as_tokens(p) for p in reply_prompts[start:start + b]], max_length=tokens,
                                     sampling_topk=1, end_token=["<|im_end|>", "<|endoftext|>"],
                                     include_prompt_in_result=False, max_batch_size=b)
            made += sum(len(r.sequences_ids[0]) for r in res)
        rates[b] = made / (time.perf_counter() - t0)
    return labels, score_s, rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--replies", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-amx", action="store_true", help="run llama.cpp even when its build uses AMX kernels")
    args = ap.parse_args()
    print(header())
    settings = load_settings(threads=args.threads)
    eng = resident(settings)
    rows = read_labeled(DEV / "zh_dev.jsonl")[: args.n]
    gold = [eng.labels.index(r["label"]) for r in rows]
    prefix, texts, label_tok = prompts(eng, rows, "zh")
    replies = [(r["text"][:300], r["label"], "zh", []) for r in rows[: args.replies]]
    reply_prompts = [eng.chat.reply_prompt(*it) for it in replies]
    greedy = {"max_new_tokens": args.tokens, "deadline_s": 600, "sampling": {"do_sample": False}}
    print(f"{len(rows)} zh dev lines; replies: {len(replies)} x up to {args.tokens} tokens, greedy\n")

    print(f"moodq ({eng.path}):")
    eng.judge([r["text"] for r in rows[:8]], "zh")  # warm-up
    t0 = time.perf_counter()
    got = [eng.labels.index(j.label) for j in eng.judge([r["text"] for r in rows], "zh", calibrate=False,
                                                        max_batch=settings.sentiment_batch_size)]
    moodq_rate = row(f"scoring, claim of {len(rows)} in passes of {settings.sentiment_batch_size}", len(rows),
                     time.perf_counter() - t0, got, gold)
    t0 = time.perf_counter()
    got = [eng.labels.index(eng.judge([r["text"]], "zh", calibrate=False)[0].label) for r in rows]
    row("scoring, one at a time", len(rows), time.perf_counter() - t0, got, gold)
    for b in (1, args.batch):
        t0, made = time.perf_counter(), 0
        for start in range(0, len(replies), b):
            made += sum(d.tokens for d in eng.draft_many(replies[start:start + b], **greedy))
        moodq_tps = made / (time.perf_counter() - t0)
        print(f"  replies, batch {b:<36}{moodq_tps:>8.1f} tok/s", flush=True)

    print("\nllama.cpp (llama-cpp-python, the GGUF as shipped):")
    if llama_amx() and not args.llama_amx:
        print("  skipped: this build runs llama.cpp's AMX kernels, which segfault on batched evals (see this script's\n"
              f"  docstring). Rebuild without them:\n  CMAKE_ARGS=\"{NO_AMX}\" pip install --no-cache-dir "
              "--force-reinstall --no-deps llama-cpp-python==0.3.36")
    else:
        llama_rate, tps = llama_cpp_rows(embedded.ensure_gguf(settings.cache_dir), prefix, texts, label_tok,
                                         reply_prompts, gold, args)
        print(f"  moodq / llama.cpp: scoring {moodq_rate / llama_rate:.2f}x, replies at batch {args.batch} against its "
              f"single stream {moodq_tps / tps:.2f}x  (torch threads {torch.get_num_threads()})", flush=True)

    converted = converting.converted_dir(settings.cache_dir, embedded.SHA256, "float32")
    print("\nCTranslate2 int8 (converted from moodq's float32 cache):")
    if not converting.ready(converted):
        print("  skipped: no float32 conversion cached (run once with MOODQ_DTYPE=float32)")
        return
    labels, secs, rates = ctranslate2_int8(converted, eng.tok, prefix, texts, label_tok, reply_prompts,
                                           args.tokens, args.batch, args.threads)
    row("scoring, one at a time (static prompt cached)", len(rows), secs, labels, gold)
    for b, tps in rates.items():
        print(f"  replies, batch {b:<36}{tps:>8.1f} tok/s", flush=True)


if __name__ == "__main__":
    main()
