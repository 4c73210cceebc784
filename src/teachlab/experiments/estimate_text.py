"""An estimate as text for the terminal: the table per stage, the notes, the calibration, the
numbered assumptions, and estimated against measured after a run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from teachlab.experiments.estimate import Estimate, StageRow

# ---------------------------------------------------------------- rendering


def render(est: Estimate) -> str:
    """The estimate as a plain-text table, then the calibration, assumptions and warnings."""
    gpu_head = est.gpu or "GPU"
    header = (
        f"{'stage':<11}{'arm':<14}{'model':<16}{'runs':>5}{'generated':>11}{'read':>10}"
        f"{'trained':>10}{'FLOPs':>10}{'here':>10}  {gpu_head}"
    )
    lines = [
        f"Compute estimate for experiment {est.experiment!r}: {len(est.tasks)} task(s) x "
        f"{len(est.arms)} arm(s) ({', '.join(est.arms)}) x {len(est.seeds)} seed(s)",
        *(
            f"{role}: {m.ref}, {m.params / 1e9:.3g}B parameters ({m.source})"
            for role, m in est.models.items()
        ),
        "",
        header,
        "-" * len(header),
    ]
    for row in [*est.rows, est.total()]:
        if row.stage == "total":
            lines.append("-" * len(header))
        lines.append(
            f"{row.stage:<11}{_arm_label(row):<14}"
            f"{row.models:<16}{row.runs:>5}{_count(row.tokens_generated):>11}"
            f"{_count(row.tokens_scored):>10}{_count(row.tokens_trained):>10}"
            f"{_flops(row.flops):>10}{_duration(row.seconds_here):>10}  "
            f"{_duration(row.seconds_gpu) if est.gpu else '-'}"
        )
    lines += ["", "Stages:"]
    lines += [f"  {r.stage} {r.arm or '(shared)'}: {r.note}" for r in est.rows if r.note]
    lines += [
        "",
        "Columns: tokens generated (decoded), read (prompts, scoring and evaluation forwards), "
        "trained (both DPO sequences); FLOPs; time here; time on the GPU.",
    ]
    if est.calibration:
        lines += ["", f"Calibration on this machine ({est.machine}), {est.created}:"]
        for c in est.calibration:
            lines.append(
                f"  {c.role} {c.ref} ({c.params / 1e6:.0f}M): prefill "
                f"{c.prefill_tokens_per_s:,.0f} tok/s = {c.prefill_flops / 1e9:.1f} GFLOP/s; "
                f"decode ({c.decode_rows} rows) {c.decode_tokens_per_s:,.1f} tok/s = "
                f"{c.decode_flops / 1e9:.2f} GFLOP/s; training step "
                f"{c.train_tokens_per_s:,.0f} tok/s = {c.train_flops / 1e9:.1f} GFLOP/s; "
                f"model load {c.load_seconds:.1f} s (pass took {c.seconds:.0f} s"
                + (f", load average {c.load:.1f} as it began)" if c.load is not None else ")")
            )
    else:
        lines += ["", f"Not calibrated (machine: {est.machine}; {est.created})."]
    lines += ["", "Assumptions:"]
    lines += [f"  {i}. {a}" for i, a in enumerate(est.assumptions, 1)]
    if est.warnings:
        lines += ["", "Warnings:"]
        lines += [f"  - {w}" for w in est.warnings]
    return "\n".join(lines)


def _arm_label(row: StageRow) -> str:
    return "" if row.stage == "total" else row.arm or "(shared)"


def render_against(rows: Sequence[Mapping[str, Any]]) -> str:
    """``against``'s rows as a plain-text table."""
    lines = [
        f"{'stage':<11}{'arm':<14}{'quantity':<18}{'estimated':>12}{'measured':>12}{'ratio':>8}"
    ]
    for r in rows:
        fmt = _duration if r["quantity"] == "seconds" else _count
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        lines.append(
            f"{r['stage']:<11}{'' if r['stage'] == 'total' else r['arm'] or '(shared)':<14}"
            f"{r['quantity']:<18}"
            f"{fmt(r['estimated']):>12}{fmt(r['measured']):>12}{ratio:>8}"
        )
    return "\n".join(lines)


def _count(n: float | None) -> str:
    if n is None:
        return "-"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def _flops(n: float) -> str:
    return f"{n:.2e}" if n else "0"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for limit, div, unit in (
        (90, 1, "s"),
        (90 * 60, 60, "min"),
        (48 * 3600, 3600, "h"),
        (2 * 365 * 86400, 86400, "d"),
    ):
        if seconds < limit:
            return f"{seconds / div:.3g} {unit}"
    return f"{seconds / (365 * 86400):.3g} y"
