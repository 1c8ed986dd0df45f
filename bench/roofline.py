"""Roofline of this host at the embedded model's shapes, and where the worker's own path sits on it.

Prints, in this order:
  1. the CPU class (first line, as every bench script does);
  2. GEMM peak at a prefill shape (1024 tokens x 896 -> 4864, the MLP's up projection) of every
     candidate kernel of worker/engine/gemms.py (the ones the kernel probe times);
  3. weight-streaming bandwidth: a GEMV (1 row) over 24 such matrices (more than the caches),
     and the decode-shape table (1..32 rows) of every candidate;
  4. the worker's path (as the probe picked it, or MOODQ_DTYPE / MOODQ_QUANT): sentiment G(FL)OP/s
     as a share of its scoring kernel's GEMM peak, and reply tokens/s as a share of the bandwidth
     limit (bandwidth / weight bytes read per decode step x batch).

Usage:  python bench/roofline.py [--n 64] [--batch 8] [--tokens 48]
To see the AVX2 class on a bf16 host:  ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/roofline.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.common import DEV, best_of, header  # noqa: E402
from worker.engine import gemms, kernels  # noqa: E402

K, N, M_PREFILL, LAYERS = 896, 4864, 1024, 24


def gemm_peaks() -> dict[str, float]:
    """G(FL)OP/s of every candidate kernel at the prefill shape."""
    x = torch.randn(M_PREFILL, K)
    w = torch.randn(N, K) * 0.02
    flop = 2 * M_PREFILL * K * N
    out = {}
    with torch.inference_mode():
        for name, kernel in gemms.candidates().items():
            try:
                state = kernel.prepare(w)
                out[name] = flop / best_of(lambda: kernel.run(state, x), repeat=3) / 1e9
            except (RuntimeError, NotImplementedError) as exc:
                print(f"  {name}: fails ({str(exc).splitlines()[0][:60]})")
    return out


def bandwidth_gbs(dtype: torch.dtype) -> float:
    """Weight bytes per second of a 1-row GEMV over LAYERS matrices of K x N (beyond the caches)."""
    ws = [torch.randn(N, K).to(dtype) for _ in range(LAYERS)]
    x = torch.randn(1, K).to(dtype)
    nbytes = sum(w.numel() * w.element_size() for w in ws)

    def run():
        for w in ws:
            x @ w.T

    with torch.inference_mode():
        return nbytes / best_of(run) / 1e9


def decode_table(rows=(1, 2, 4, 8, 16, 32)) -> list[tuple[int, dict[str, float]]]:
    """(rows, kernel -> ms) over LAYERS matrices."""
    ws = [torch.randn(N, K) * 0.02 for _ in range(LAYERS)]
    prepared = {}
    for name, k in gemms.candidates().items():
        try:
            prepared[name] = (k, [k.prepare(w) for w in ws])
        except (RuntimeError, NotImplementedError) as exc:
            print(f"  {name}: fails ({str(exc).splitlines()[0][:60]})")
    table = []
    with torch.inference_mode():
        for m in rows:
            x = torch.randn(m, K)
            table.append((m, {name: best_of(lambda: [k.run(st, x) for st in states]) * 1000
                              for name, (k, states) in prepared.items()}))
    return table


def weight_bytes_per_step(model: nn.Module) -> int:
    """Bytes of weights one decode step reads: each Linear once, in the format its decode kernel reads."""
    total = 0
    for mod in model.modules():
        if isinstance(mod, kernels.PhaseLinear):
            kernel = mod.kernels["decode"][0]
            total += mod.in_features * mod.out_features * (1 if kernel.int8 else kernel.dtype.itemsize)
        elif isinstance(mod, nn.Linear):
            total += mod.weight.numel() * mod.weight.element_size()
    return total


def worker_path(args, peaks: dict[str, float], bandwidth: float) -> None:
    from worker.common.settings import load_settings
    from worker.jobs.resident import engine as resident
    from worker.quality.evaluate import read_labeled

    settings = load_settings(threads=args.threads)
    eng = resident(settings)
    model = eng.model
    head = model.get_output_embeddings()
    layers = sum(m.in_features * m.out_features for m in model.modules()
                 if isinstance(m, (nn.Linear, kernels.PhaseLinear)) and m is not head)  # 2 FLOP each per token
    print(f"\n== the worker's path: {eng.path} ({eng.model_id}, {layers / 1e6:.0f} M weights in the decoder layers)")
    rows = read_labeled(DEV / "zh_dev.jsonl")[: args.n]
    texts = [r["text"] for r in rows]
    plan = eng.scorer.frames["zh"]
    tokens = sum(len(eng.chat.encode(eng.chat.clean(t))) + len(plan.suffix_ids) for t in texts)
    eng.judge(texts[:8], "zh", max_batch=settings.sentiment_batch_size)  # warm-up
    seconds = best_of(lambda: eng.judge(texts, "zh", max_batch=settings.sentiment_batch_size), repeat=2)
    # Per token: 2 FLOP per weight of the layers (the head runs only at the label positions).
    gflops = 2 * layers * tokens / seconds / 1e9
    peak = peaks[eng.plan.score]
    print(f"sentiment: {len(texts)} messages ({tokens} tokens beyond the cached prefix) in {seconds:.2f} s = "
          f"{len(texts) / seconds:.1f} msg/s, {gflops:.0f} G(FL)OP/s = {gflops / peak:.0%} of the "
          f"{peak:.0f} G(FL)OP/s GEMM peak of {eng.plan.score}")

    items = [(r["text"][:300], r["label"], "zh", []) for r in rows[: args.batch * 2]]
    common = {"max_new_tokens": args.tokens, "deadline_s": 600, "sampling": {"do_sample": False}}
    eng.draft_many(items[:2], **{**common, "max_new_tokens": 4})  # warm-up
    per_step = weight_bytes_per_step(model)
    for batch in sorted({1, args.batch}):
        t0, made = time.perf_counter(), 0
        for start in range(0, len(items), batch):
            made += sum(d.tokens for d in eng.draft_many(items[start:start + batch], **common))
        rate = made / (time.perf_counter() - t0)
        limit = bandwidth * 1e9 / per_step * batch
        print(f"replies, batch {batch:>2}: {rate:.1f} tok/s (prefill included); bandwidth limit "
              f"{bandwidth:.1f} GB/s / {per_step / 1e6:.0f} MB per step x {batch} = {limit:.0f} tok/s -> "
              f"{rate / limit:.0%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="dev lines for the sentiment figure")
    ap.add_argument("--batch", type=int, default=8, help="reply batch for the decode figure")
    ap.add_argument("--tokens", type=int, default=48, help="reply tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kernels-only", action="store_true", help="skip the worker's path (no model load)")
    args = ap.parse_args()
    print(header())
    torch.set_num_threads(args.threads)

    peaks = gemm_peaks()
    print(f"\n== GEMM peak, {M_PREFILL}x{K} @ {K}x{N}, {args.threads} threads")
    for name, v in peaks.items():
        print(f"  {name:<34}{v:>8.1f} G(FL)OP/s")
    bw = {str(dt).removeprefix("torch."): bandwidth_gbs(dt) for dt in (torch.float32, torch.bfloat16)}
    print(f"\n== weight streaming (1-row GEMV over {LAYERS} matrices of {K}x{N})")
    for name, v in bw.items():
        print(f"  {name:<34}{v:>8.1f} GB/s")
    table = decode_table()
    names = list(table[0][1])
    print(f"\n== decode shapes, {LAYERS} matrices, ms (ratio to float32)")
    print(f"  {'rows':>5}" + "".join(f"{n:>24}" for n in names))
    for m, ms in table:
        print(f"  {m:>5}" + "".join(f"{f'{ms[n]:.2f} ({ms[gemms.FLOAT32] / ms[n]:.2f}x)':>24}" for n in names))
    if not args.kernels_only:
        worker_path(args, peaks, max(bw.values()))


if __name__ == "__main__":
    main()
