"""How closely each int8 kernel follows float32 where replies are drafted: teacher-forced next-token agreement.

float32 drafts greedy replies to dev lines it was never tuned on (the shipped reply prompts, the line's gold
label); then each path reads the same prompt + reply in one forward pass (every layer on its kernel, as a
reply's prefill and batched decode steps run it), and at every reply position we compare its next-token
distribution with float32's: top-1 agreement and mean KL(float32 || path). Sampling and loops amplify small
differences chaotically; this measures the difference itself, so two kernels (or two versions of one) can be
compared in one run. Labels have their own measure: bench/paths.py.

Usage:  python bench/fidelity.py [--n 12] [--tokens 48] [--paths float32:int8-fbgemm,float32:int8-intmm]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.common import DEV, header  # noqa: E402
from worker.common.prompts import load_prompts  # noqa: E402
from worker.common.settings import load_settings  # noqa: E402
from worker.engine import kernels  # noqa: E402
from worker.engine.chat import Chat  # noqa: E402
from worker.engine.loading import load  # noqa: E402
from worker.quality.evaluate import read_labeled  # noqa: E402


def replies(n: int, tokens: int, threads: int) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
    """(prompt + float32's greedy reply, the prompt's length, float32's log-probabilities at the reply's positions)."""
    settings = load_settings(dtype="float32", quant="none", threads=threads)
    loaded = load(settings)
    chat = Chat(loaded.tokenizer, load_prompts(settings.prompts))
    out = []
    with torch.inference_mode():
        for lang in ("zh", "en"):
            for row in read_labeled(DEV / f"{lang}_dev.jsonl")[280:280 + n]:  # lines no prompt was tuned on
                ids = torch.tensor([chat.reply_prompt(row["text"], row["label"], lang, [])])
                full = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                             do_sample=False)
                out.append((full, ids.shape[1], _logprobs(loaded.model, full, ids.shape[1])))
    return out


def _logprobs(model, full: torch.Tensor, start: int) -> torch.Tensor:
    return torch.log_softmax(model(input_ids=full).logits[0, start - 1:-1].float(), dim=-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=12, help="dev lines per language")
    ap.add_argument("--tokens", type=int, default=48, help="reply tokens float32 drafts")
    ap.add_argument("--paths", default="float32:int8-fbgemm,float32:int8-intmm,bfloat16:int8-intmm,bfloat16:int8-onednn",
                    help="comma list of dtype:kernel (every layer, both phases)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(header())
    torch.set_num_threads(args.threads)
    reference = replies(args.n, args.tokens, args.threads)
    print(f"{len(reference)} float32 greedy replies (lines 281-{280 + args.n} of each dev set), "
          f"{sum(r[0].shape[1] - r[1] for r in reference)} reply tokens")
    print(f"{'dtype:kernel':<24}{'top-1 agreement':>17}{'mean KL':>10}")
    for spec in args.paths.split(","):
        dtype, kernel = spec.split(":")
        loaded = load(load_settings(dtype=dtype, quant="none", threads=args.threads))
        kernels.apply(loaded.model, dtype, kernel, kernel)
        agree = total = 0
        kl = 0.0
        with torch.inference_mode():
            for full, start, ref in reference:
                got = _logprobs(loaded.model, full, start)
                agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
                total += ref.shape[0]
                kl += float((ref.exp() * (ref - got)).sum())
        print(f"{spec:<24}{agree / total:>16.2%} {kl / total:>9.4f}")


if __name__ == "__main__":
    main()
