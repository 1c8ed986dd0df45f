"""A scoring pass reads one row per message out of the model's last decoder layer (a reply's prefill: its last
row), so that layer's MLP runs on those rows only.

Per row, a decoder layer's MLP is most of its work (Qwen2-0.5B: gate, up and down, 3 x 896 x 4864, against
2.3 x 896 x 896 for q, k, v and o), and a scoring pass of 16 zh messages has ~50 rows per message of which it
reads one. The MLP's output is added to the residual stream: given rows [n, 1, d] instead of [n, width, d], the
addition broadcasts each message's one output over its row, right at the row a caller reads and wrong at the
others, which nothing reads. The last layer's keys and values (the KV cache a label's later tokens run on)
come from its attention, before the MLP, so they stay exact.

The hook is on the module, not the thread: one forward pass at a time per process (a prefork pool's). Only for
the architectures below, whose decoder layers add ``mlp(norm(h))`` to ``h`` (and are dense): another
model runs its last layer whole.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

ARCHITECTURES = frozenset({"qwen2", "qwen3", "llama", "mistral"})


def last_mlp(model: nn.Module) -> nn.Module | None:
    """The last decoder layer's MLP, where this module knows how the layer uses it."""
    if getattr(model.config, "model_type", None) not in ARCHITECTURES:
        return None
    layers = getattr(model.base_model, "layers", None)
    return getattr(layers[-1], "mlp", None) if layers else None


@contextmanager
def reading(model: nn.Module, rows: torch.Tensor):
    """Within this block, a forward pass over [n, width] tokens computes the last layer's MLP only at row
    ``rows[i]`` of message ``i``: the only rows of the last hidden state the caller may read."""
    mlp = last_mlp(model)
    if mlp is None:
        yield
        return

    def gather(module, args):
        x = args[0]
        assert rows.shape == (x.shape[0],), "one row per message"
        return (x[torch.arange(x.shape[0]), rows].unsqueeze(1), *args[1:])

    handle = mlp.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()
