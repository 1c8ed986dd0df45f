"""Waiting for records to become final: the progress bar of `watch` and the wait of `ask`/`demo`."""

from __future__ import annotations

import time

from tqdm import tqdm

from producer.clitools import quiet
from worker.common.schemas import Record
from worker.common.store import Store


def watch(store: Store, timeout: float, interval: float) -> dict[str, int]:
    """A progress bar over every record until none is pending or labeled (or ``timeout`` passes, 0 = never)."""
    started = time.monotonic()
    counts = store.counts()
    with tqdm(total=sum(counts.values()), desc="processed", unit="msg", disable=quiet() or None) as bar:
        while True:
            counts = store.counts()
            bar.total = sum(counts.values())
            bar.n = counts["done"] + counts["review"] + counts["failed"]
            bar.set_postfix(done=counts["done"], review=counts["review"], failed=counts["failed"],
                            pending=counts["pending"] + counts["labeled"], refresh=True)
            if counts["pending"] + counts["labeled"] == 0:
                break
            if timeout and time.monotonic() - started > timeout:
                break
            time.sleep(interval)
    return counts


def wait_for(store: Store, ids: list[str], timeout: float, on_change=None) -> list[Record]:
    """Poll until every id's record is final (or the timeout passes); returns the records.

    Polls the status sets (cheap even for 10,000 ids); whole records are read only for
    ``on_change`` (meant for a few ids) and at the end.
    """
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while True:
        if on_change:
            for rec in store.get_many(ids):
                if seen.get(rec.id) != rec.status:
                    on_change(rec)
                seen[rec.id] = rec.status
        if store.count_final(ids) == len(ids) or time.monotonic() > deadline:
            return list(store.iter_records(ids))
        time.sleep(0.2 if len(ids) <= 100 else 1.0)
