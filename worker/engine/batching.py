"""Shaping token sequences into batches the CPU runs well: similar lengths together, long ones clipped."""

from __future__ import annotations


def buckets(encoded: list[list[int]], max_batch: int, slack: float = 1.25, extra: int = 8) -> list[list[int]]:
    """Indices grouped by similar token length: a bucket's longest is at most ``slack`` x its shortest + ``extra``.

    Shortest first. Padding a batch to its longest member made CPU batches slower than one at a time.
    """
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    groups: list[list[int]] = []
    for i in order:
        if groups and len(groups[-1]) < max_batch and len(encoded[i]) <= slack * len(encoded[groups[-1][0]]) + extra:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def head_and_tail(ids: list[int], limit: int) -> list[int]:
    """At most ``limit`` tokens (0 = no limit): the opening and the ending of a long message."""
    if not limit or len(ids) <= limit:
        return ids
    head = (limit + 1) // 2
    return ids[:head] + ids[len(ids) - (limit - head):]
