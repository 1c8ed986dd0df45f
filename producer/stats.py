"""Rolling-window figures over the records (stream monitoring) and the negative-share alert.

Each record counts in a window by the time it was labeled (or failed). Pure functions on
records, so a hand-computed case can check them; ``Store.since`` reads the records.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from worker.common.schemas import Record

WINDOWS = {"1m": 60, "5m": 300, "60m": 3600}


def event_time(rec: Record) -> float | None:
    """When the record got its outcome: labeled, or failed."""
    return rec.labeled_at or (rec.finished_at if rec.status == "failed" else None)


def window(records: Iterable[Record], now: float, seconds: float, negative: str) -> dict:
    inside = [r for r in records if (t := event_time(r)) is not None and now - seconds < t <= now]
    labeled = [r for r in inside if r.label is not None]
    return {
        "messages": len(inside),
        "labeled": len(labeled),
        "negative_share": round(sum(r.label == negative for r in labeled) / len(labeled), 4) if labeled else None,
        "mean_confidence": round(statistics.fmean(r.confidence for r in labeled), 4) if labeled else None,
        "failures": sum(r.status == "failed" for r in inside),
        "replies_cut": sum(bool(r.reply_truncated) for r in inside),  # cut by the token cap or deadline
        "needs_review": sum(r.status == "review" for r in inside),  # replies a rule still flags
    }


def rolling(records: list[Record], now: float, negative: str, windows: dict[str, float] = WINDOWS) -> dict:
    return {name: window(records, now, seconds, negative) for name, seconds in windows.items()}


class NegativeAlert:
    """Fires once when a window's negative share reaches the threshold, again only after it fell below."""

    def __init__(self, threshold: float, window_name: str, min_messages: int):
        self.threshold, self.window_name, self.min_messages = threshold, window_name, min_messages
        self.active = False

    def check(self, stats: dict, now: float) -> dict | None:
        w = stats[self.window_name]
        high = w["labeled"] >= self.min_messages and (w["negative_share"] or 0) >= self.threshold
        fired = high and not self.active
        self.active = high
        if not fired:
            return None
        return {"at": now, "window": self.window_name, "negative_share": w["negative_share"],
                "labeled": w["labeled"], "threshold": self.threshold}


def table(figures: dict, negative: str, now: float) -> str:
    """The windows as a text table, for `moodq stats`."""
    import time

    lines = [f"moodq stats at {time.strftime('%H:%M:%S', time.localtime(now))}",
             f"{'window':>7} {'messages':>9} {'labeled':>8} {negative + ' share':>15} {'mean conf':>10} {'failures':>9}"
             f" {'replies cut':>12} {'needs review':>13}"]
    for name, w in figures.items():
        share = "-" if w["negative_share"] is None else f"{w['negative_share']:.1%}"
        conf = "-" if w["mean_confidence"] is None else f"{w['mean_confidence']:.3f}"
        lines.append(f"{name:>7} {w['messages']:>9} {w['labeled']:>8} {share:>15} {conf:>10} {w['failures']:>9}"
                     f" {w['replies_cut']:>12} {w['needs_review']:>13}")
    return "\n".join(lines)
