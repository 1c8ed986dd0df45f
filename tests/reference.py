"""The plain way to score labels, for tests only: the whole prompt + text + label prefix through the
model, no KV cache. What worker.engine.scoring's cached path must agree with."""

from __future__ import annotations

import torch

from worker.engine.scoring import Frame, Scorer


class ReferenceScorer(Scorer):
    cached = False

    def label_states(self, frame: Frame, encoded: list[list[int]]) -> dict[tuple, torch.Tensor]:
        out: dict[tuple, torch.Tensor] = {}
        for pre in frame.groups:
            rows = [frame.prefix_ids + ids + frame.suffix_ids + list(pre) for ids in encoded]
            batch = self.chat.tok.pad({"input_ids": rows}, padding_side="right", return_tensors="pt")
            with torch.inference_mode():
                states = self.model.base_model(**batch).last_hidden_state
            first = [len(r) - len(pre) - 1 for r in rows]
            out[pre] = torch.stack([states[i, f: f + len(pre) + 1] for i, f in enumerate(first)])
        return out
