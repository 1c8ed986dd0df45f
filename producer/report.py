"""`moodq report`: one self-contained HTML page (and a PNG) about the stored records.

Sentiment over time, label shares, a confidence histogram, failures by stage and reason,
and the most negative messages. The PNG is embedded in the HTML as base64, so the page
is a single file that can be mailed around.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from worker.common.schemas import Record

COLORS = {"negative": "tab:red", "positive": "tab:green", "neutral": "tab:gray"}


def figures(records: list[Record], negative: str) -> dict:
    """The numbers the report shows (tests check these)."""
    labeled = [r for r in records if r.label]
    failed = [r for r in records if r.status == "failed"]
    return {
        "messages": len(records),
        "status": dict(Counter(r.status for r in records)),
        "labels": dict(Counter(r.label for r in labeled)),
        "failures_by_stage": dict(Counter(r.error_stage or "?" for r in failed)),
        "failure_reasons": Counter(r.error for r in failed).most_common(10),
        "replies_cut": sum(bool(r.reply_truncated) for r in records),
        "needs_review": sum(r.status == "review" for r in records),
        "most_negative": sorted((r for r in labeled if r.probs and negative in r.probs),
                                key=lambda r: -r.probs[negative])[:20],
    }


def picture(records: list[Record], negative: str) -> bytes:
    """A 2x2 PNG: messages over time by label, label shares, confidence histogram, failures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    labeled = [r for r in records if r.label and r.labeled_at]
    fig, ax = plt.subplots(2, 2, figsize=(12, 8))
    labels = sorted({r.label for r in labeled})
    colors = [COLORS.get(lab, f"C{i}") for i, lab in enumerate(labels)]
    if labeled:
        when = [[datetime.fromtimestamp(r.labeled_at) for r in labeled if r.label == lab] for lab in labels]
        ax[0][0].hist(when, bins=30, stacked=True, label=labels, color=colors)
        ax[0][0].legend()
        ax[0][0].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax[0][0].tick_params(axis="x", labelrotation=30)
        counts = Counter(r.label for r in labeled)
        ax[0][1].pie([counts[lab] for lab in labels], labels=[f"{lab} ({counts[lab]})" for lab in labels],
                     autopct="%1.0f%%", colors=colors)
        ax[1][0].hist([r.confidence for r in labeled if r.confidence is not None], bins=20, range=(0, 1))
    ax[0][0].set(title="messages labeled over time (stacked by label)", xlabel="time labeled", ylabel="messages")
    ax[0][1].set(title="label shares")
    ax[1][0].set(title="confidence of the label", xlabel="probability of the chosen label", ylabel="messages")
    fails = Counter(r.error_stage or "?" for r in records if r.status == "failed")
    status = Counter(r.status for r in records)
    shown = ("done", "review", "labeled", "pending", "failed")  # review: a reply a rule flags, for a person to read
    names = list(shown) + [f"failed: {k}" for k in fails]
    ax[1][1].barh(names, [status.get(s, 0) for s in shown] + list(fails.values()),
                  color=["tab:green", "tab:orange", "tab:blue", "tab:gray", "tab:red"] + ["salmon"] * len(fails))
    ax[1][1].set(title="records by status, failures by stage", xlabel="messages")
    fig.suptitle(f"moodq: {len(records)} messages, negative = '{negative}'")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _reply_cell(r: Record) -> str:
    """The drafted reply; one that needs a person's review (a rule flags it, or it was cut) says why first, in red."""
    text = html.escape(r.reply or "")
    if r.status == "review":
        why = html.escape(", ".join(r.flags) or "flagged")
        return f'<b class="review" style="color:#b00">[NEEDS REVIEW: {why}]</b> {text}'
    return f'<b class="cut" style="color:#b00">[CUT, not a finished draft]</b> {text}' if r.reply_truncated else text


def render(records: list[Record], negative: str, html_path: Path, png_path: Path | None = None) -> dict:
    facts = figures(records, negative)
    png = picture(records, negative)
    if png_path:
        png_path.write_bytes(png)
    esc = html.escape
    rows = "".join(
        f"<tr><td>{r.probs[negative]:.2f}</td><td>{esc(r.id)}</td><td>{esc(r.text[:300])}</td>"
        f"<td>{_reply_cell(r)}</td></tr>" for r in facts["most_negative"])
    reasons = "".join(f"<tr><td>{n}</td><td>{esc(reason or '?')}</td></tr>" for reason, n in facts["failure_reasons"])
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(facts["status"].items()))
    labels = ", ".join(f"{k}: {v}" for k, v in sorted(facts["labels"].items()))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>moodq report</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}</style></head><body>
<h1>moodq report</h1><p>Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.
<b id="messages">{facts['messages']}</b> messages &mdash; status: <span id="status">{esc(counts)}</span>;
labels: <span id="labels">{esc(labels)}</span>;
replies cut before their end (not finished drafts): <b id="replies-cut">{facts['replies_cut']}</b>;
replies that need a person's review before they are sent: <b id="needs-review">{facts['needs_review']}</b>.</p>
<img alt="charts" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<h2>Most negative messages (read these first)</h2>
<table><tr><th>P({esc(negative)})</th><th>id</th><th>text</th><th>drafted reply</th></tr>{rows}</table>
<h2>Failures</h2><table><tr><th>count</th><th>reason</th></tr>{reasons}</table>
</body></html>"""
    html_path.write_text(page, encoding="utf-8")
    return facts
