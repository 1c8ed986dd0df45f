"""KV caches as batches of rows: the argument's name, and joining, dropping and trimming rows of
a left-padded transformers ``DynamicCache`` (what continuous batching in worker.engine.drafting needs)."""

from __future__ import annotations

import functools
import inspect

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer


@functools.cache
def _name(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def cache_arg(model: PreTrainedModel, cache) -> dict:
    """``{name: cache}`` for ``model``'s forward: transformers >= 5.2x calls the KV cache argument
    ``cache`` (``past_key_values`` is deprecated there, and the only name before)."""
    return {_name(type(model.base_model)): cache}


def returned(out):
    """The KV cache a forward pass returned, under either name."""
    return out.cache if "cache" in out else out.past_key_values


def rows_can_join(model: PreTrainedModel) -> bool:
    """True when the model's cache is plain full-attention layers, whose rows can be padded and joined.
    (Sliding-window or recurrent layers cannot: such models draft one reply at a time.)"""
    probe = DynamicCache(config=model.config)
    return bool(probe.layers) and all(type(layer) is DynamicLayer for layer in probe.layers)


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - t.shape[-2]
    if missing <= 0:
        return t
    return torch.cat([t.new_zeros(*t.shape[:-2], missing, t.shape[-1]), t], dim=-2)


def join(a: DynamicCache | None, b: DynamicCache) -> DynamicCache:
    """Rows of ``a`` then rows of ``b``, right-aligned (the shorter one left-padded with zeros, which
    the attention mask hides)."""
    if a is None:
        return b
    width = max(a.get_seq_length(), b.get_seq_length())
    layers = [(torch.cat([_left_pad(ka, width), _left_pad(kb, width)]), torch.cat([_left_pad(va, width), _left_pad(vb, width)]))
              for (ka, va, *_), (kb, vb, *_) in zip(a, b)]
    return DynamicCache(layers)


def keep(cache: DynamicCache, rows: list[int], first_column: int) -> DynamicCache:
    """Only ``rows``, and only the columns from ``first_column`` on (columns every kept row pads)."""
    index = torch.tensor(rows)
    return DynamicCache([(k[index, :, first_column:], v[index, :, first_column:]) for k, v, *_ in cache])
