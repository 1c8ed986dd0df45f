"""The resident language model: which kernels this host runs fastest (measured, cached), loading the model,
label scoring and reply drafting by continuous batching. Knows nothing of Celery or queues."""

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_imports() -> Iterator[None]:
    """Import torch, transformers and this package with Python's cyclic collector off, then freeze what they made.

    They allocate millions of objects and no garbage: the collector, run hundreds of times meanwhile, cost 1.3-2.6 s
    of the 8-9.5 s these imports take on an AVX2-only EPYC. Frozen, it never walks them again, and forked pool
    processes do not touch (and so copy) their pages when they collect (Python's gc docs, gc.freeze)."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
