"""The kernel probe's table as an operator reads it (``moodq probe``, and the head of every bench script)."""

from __future__ import annotations

from worker.engine import gemms
from worker.engine.gemms import FLOAT32
from worker.engine.probe import REPLY_TOKENS, SAME_KERNEL_SLACK, Plan, drift, phase_ms


def table_text(plan: Plan) -> str:
    """The probe's table as an operator reads it: candidates x row counts and phases, ms and ratio."""
    rows, table = plan.rows, plan.table
    cols = rows.measured()
    base = {m: (table.get(FLOAT32, {}).get(str(m)) or {}).get("ms") for m in cols}
    phase_base = {p: phase_ms(table, FLOAT32, p, rows) for p in ("score", "decode")}
    picked = {"score": plan.score, "decode": plan.decode}
    head = (["kernel"] + [f"{m} rows" for m in cols]
            + [f"scoring pass ({rows.score} rows)", f"reply (prefill + {REPLY_TOKENS} steps at {rows.batch})"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, cells in table.items():
        row = [name]
        for m in cols:
            c = cells.get(str(m), {})
            row.append(f"{c['ms']:.2f} ms ({base[m] / c['ms']:.2f}x)" if c.get("ms") and base[m]
                       else c.get("note") or "-")
        for phase in ("score", "decode"):
            ms = phase_ms(table, name, phase, rows)
            mark = " **picked**" if picked[phase] == name else ""
            if phase == "score" and ms is not None and gemms.candidates()[name].int8 and \
                    (name, plan.dtype) not in plan.scorable:
                mark = " (not label-safe)"
            row.append(f"{ms:.2f} ms ({phase_base[phase] / ms:.2f}x){mark}" if ms and phase_base[phase] else "-")
        lines.append("| " + " | ".join(row) + " |")
    again: dict[tuple, list[str]] = {}  # rows timed again (timing.retime) -> kernels
    for name, cells in table.items():
        if counts := tuple(sorted(int(m) for m, c in cells.items() if c.get("rounds"))):
            again.setdefault(counts, []).append(name)
    if again:
        which = "; ".join(f"{', '.join(names)} at {', '.join(map(str, counts))} rows"
                          for counts, names in again.items())
        lines.append(f"({which}: timed again, longer, as a close call for one weight copy)")
    halves = any("halves_ms" in c for c in table.get(FLOAT32, {}).values())  # not in an injected table
    steady = f", float32's earlier and later rounds {drift(table):.2f}x apart" if halves else ""  # past MAX_DRIFT: busy
    return "\n".join([f"kernel probe ({plan.source}; measured in {plan.seconds:.1f} s{steady}): time per decoder layer, "
                      f"ratio = float32's time / the kernel's (above 1: faster)", *lines,
                      f"(a phase runs the other phase's kernel when that takes at most {SAME_KERNEL_SLACK}x its fastest's "
                      "time: one weight copy instead of two)",
                      f"path: {plan}"])
