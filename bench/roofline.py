"""Roofline of this host at the embedded model's shapes, and where the worker's own path sits on it.

Prints, in this order:
  1. the CPU class (first line, as every bench script does);
  2. GEMM peak at a prefill shape (1024 tokens x 896 -> 4864, the MLP's up projection) in
     float32, bfloat16, int8 W8A8 (per-token int8 activations x per-channel int8 weights,
     torch._int_mm: what MOODQ_QUANT=int8-decode / int8 run) and int8 weight-only
     (aten._weight_int8pack_mm, tried and not used);
  3. weight-streaming bandwidth: a GEMV (1 row) over 24 such matrices (more than the caches),
     and the decode-shape table (1..32 rows) of int8 weight-only vs the float dtype;
  4. the worker's path (MOODQ_DTYPE / MOODQ_QUANT as set, default auto): sentiment GFLOP/s as a share
     of that dtype's GEMM peak, and reply tokens/s as a share of the bandwidth limit
     (bandwidth / weight bytes read per decode step x batch).

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
from worker.quant import Int8Linear  # noqa: E402

K, N, M_PREFILL, LAYERS = 896, 4864, 1024, 24


def _weight_only(lin: nn.Linear):
    """int8 weight-only (aten._weight_int8pack_mm, bf16 activations): tried for decode, not used."""
    w = lin.weight.detach().float()
    scale = w.abs().amax(dim=1) / 127
    q, s = torch.round(w / scale[:, None]).to(torch.int8), scale.to(torch.bfloat16)
    return lambda x: torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), q, s)


def gemm_peaks(floats: list[torch.dtype]) -> dict[str, float]:
    """GFLOP/s (GOP/s for int8) at the prefill shape."""
    x32 = torch.randn(M_PREFILL, K)
    lin = nn.Linear(K, N, bias=False)
    flop = 2 * M_PREFILL * K * N
    out = {}
    with torch.inference_mode():
        for dt in floats:
            w, x = lin.weight.to(dt), x32.to(dt)
            out[str(dt).removeprefix("torch.")] = flop / best_of(lambda: x @ w.T) / 1e9
        q = Int8Linear(lin, always=True)
        out["int8 W8A8 (moodq's Int8Linear)"] = flop / best_of(lambda: q(x32)) / 1e9
        wo = _weight_only(lin)
        out["int8 weight-only (not used)"] = flop / best_of(lambda: wo(x32)) / 1e9
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


def decode_table(dtype: torch.dtype, rows=(1, 2, 4, 8, 16, 32)) -> list[tuple[int, float, float, float]]:
    """(rows, float ms, moodq int8 ms, int8 weight-only ms) over LAYERS matrices of ``dtype``."""
    lins = [nn.Linear(K, N, bias=False).to(dtype) for _ in range(LAYERS)]
    qs = [Int8Linear(lin, always=True) for lin in lins]
    wos = [_weight_only(lin) for lin in lins]
    table = []
    with torch.inference_mode():
        for m in rows:
            x = torch.randn(m, K).to(dtype)
            f = best_of(lambda: [x @ lin.weight.T for lin in lins])
            q = best_of(lambda: [ql(x) for ql in qs])
            w = best_of(lambda: [wo(x) for wo in wos])
            table.append((m, f * 1000, q * 1000, w * 1000))
    return table


def weight_bytes_per_step(model: nn.Module) -> int:
    """Bytes of weights one decode step reads: each Linear once (its int8 copy where it has one)."""
    total = 0
    for mod in model.modules():
        if isinstance(mod, Int8Linear):
            total += mod.qweight_t.numel() + mod.wscale.numel() * 4
        elif isinstance(mod, nn.Linear):
            total += mod.weight.numel() * mod.weight.element_size()
    return total


def worker_path(args, peaks: dict[str, float], bandwidth: float) -> None:
    from worker.evaluate import read_labeled
    from worker.resident import engine as resident
    from worker.settings import load_settings

    settings = load_settings(threads=args.threads)
    eng = resident(settings)
    model = eng.model
    head = model.get_output_embeddings()
    layers = sum(m.weight.numel() for m in model.modules()
                 if isinstance(m, (nn.Linear, Int8Linear)) and m is not head)  # 2 FLOP each per token
    print(f"\n== the worker's path: {eng.path} ({eng.model_id}, {layers / 1e6:.0f} M weights in the decoder layers)")
    rows = read_labeled(DEV / "zh_dev.jsonl")[: args.n]
    texts = [r["text"] for r in rows]
    plan = eng.scorer.plans["zh"]
    tokens = sum(len(eng.chat.encode(eng.chat.clean(t))) + len(plan.suffix_ids) for t in texts)
    eng.judge(texts[:8], "zh", max_batch=settings.sentiment_batch_size)  # warm-up
    seconds = best_of(lambda: eng.judge(texts, "zh", max_batch=settings.sentiment_batch_size), repeat=2)
    # Per token: 2 FLOP per weight of the layers (the head runs only at the label positions).
    gflops = 2 * layers * tokens / seconds / 1e9
    peak = peaks[eng.path.split("/")[1].split("+")[0]]
    print(f"sentiment: {len(texts)} messages ({tokens} tokens beyond the cached prefix) in {seconds:.2f} s = "
          f"{len(texts) / seconds:.1f} msg/s, {gflops:.0f} GFLOP/s = {gflops / peak:.0%} of the "
          f"{peak:.0f} GFLOP/s GEMM peak")

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

    peaks = gemm_peaks([torch.float32, torch.bfloat16])
    print(f"\n== GEMM peak, {M_PREFILL}x{K} @ {K}x{N}, {args.threads} threads")
    for name, v in peaks.items():
        print(f"  {name:<34}{v:>8.1f} G(FL)OP/s")
    bw = {str(dt).removeprefix("torch."): bandwidth_gbs(dt) for dt in (torch.float32, torch.bfloat16)}
    print(f"\n== weight streaming (1-row GEMV over {LAYERS} matrices of {K}x{N})")
    for name, v in bw.items():
        print(f"  {name:<34}{v:>8.1f} GB/s")
    for dt in (torch.float32, torch.bfloat16):
        print(f"\n== decode shapes, {LAYERS} matrices: {str(dt).removeprefix('torch.')} weights vs moodq's int8 "
              "W8A8 (MOODQ_QUANT=int8-decode) and int8 weight-only (not used)")
        print(f"  {'rows':>5}{'float ms':>10}{'W8A8 ms':>10}{'speed-up':>10}{'w-only ms':>11}{'speed-up':>10}")
        for m, f, q, w in decode_table(dt):
            print(f"  {m:>5}{f:>10.2f}{q:>10.2f}{f / q:>9.2f}x{w:>11.2f}{f / w:>9.2f}x")
    if not args.kernels_only:
        worker_path(args, peaks, max(bw.values()))


if __name__ == "__main__":
    main()
