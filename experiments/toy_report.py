"""The toy experiment's analysis: per-draft records in, one table and its report out.

Pure functions (no models, no database) so the statistics are tested on hand-made records;
``experiments/toy.py`` produces the records.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TEACHERS = ("original", "aligned")
NO_ANSWER = "(no answer)"
COMPARE_ROUND = 1  # the comparison drafts as the next round would: seeds unseen by preferences


@dataclass(frozen=True)
class DraftRecord:
    """One rationale a teacher wrote in the comparison, with its held-out scores."""

    seed: int
    teacher: str  # original | aligned
    key: str  # the request: question slot and strategy, e.g. "q:3:0/expert" (same for both)
    text: str  # a hash of the raw output: equal hashes, word-for-word the same draft
    parsed: bool  # status ok (the output has text): scored
    label: str | None  # the answer inside <ans>, None when there is none
    words: int
    accuracy: float | None  # mean over held-out items
    margin: float | None  # mean log p(gold) − max log p(other) over held-out items


@dataclass(frozen=True)
class Diff:
    """aligned − original: difference of means, bootstrap 95% CI, permutation p-value."""

    value: float
    low: float
    high: float
    p: float


@dataclass(frozen=True)
class TeacherSummary:
    teacher: str
    questions: int  # question blocks (and outputs without any block) generated
    questions_parsed: int
    rationales: int
    rationales_answered: int  # with an answer inside <ans></ans>: the format parsed
    label_mix: dict[str, float]
    words: float | None
    scored: int
    accuracy: float | None
    margin: float | None


def label_mix(labels: Sequence[str | None]) -> dict[str, float]:
    """Share of each answer label (case and spaces aside), largest first; empty for no labels."""
    keys = [" ".join(label.split()).casefold() if label else NO_ANSWER for label in labels]
    counts = Counter(keys)
    return {k: n / len(keys) for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(
    teacher: str, records: Sequence[DraftRecord], questions: tuple[int, int]
) -> TeacherSummary:
    """Counts, parse rates, label mix, length and mean scores of one teacher's drafts.

    ``questions``: (question blocks generated, blocks that parsed), from the drafting stage.
    """
    own = [r for r in records if r.teacher == teacher]
    parsed = [r for r in own if r.parsed]
    scored = [r for r in parsed if r.accuracy is not None]
    margins = [r.margin for r in scored if r.margin is not None]
    return TeacherSummary(
        teacher=teacher,
        questions=questions[0],
        questions_parsed=questions[1],
        rationales=len(own),
        rationales_answered=sum(r.label is not None for r in own),
        label_mix=label_mix([r.label for r in parsed]),
        words=_mean([float(r.words) for r in parsed]),
        scored=len(scored),
        accuracy=_mean([r.accuracy for r in scored if r.accuracy is not None]),
        margin=_mean(margins),
    )


def difference(
    aligned: Sequence[float],
    original: Sequence[float],
    *,
    n_resamples: int = 2000,
    n_permutations: int = 10000,
    seed: int = 0,
) -> Diff | None:
    """aligned − original over drafts; None unless both sides have two scored drafts or more
    (a bootstrap resamples each side on its own, which needs two values)."""
    from teachlab.stats import diff_ci, permutation_pvalue

    if len(aligned) < 2 or len(original) < 2:
        return None
    value, low, high = diff_ci(aligned, original, n_resamples=n_resamples, seed=seed)
    p = permutation_pvalue(aligned, original, n=n_permutations, seed=seed)
    return Diff(value, low, high, p)


def identical(records: Sequence[DraftRecord]) -> tuple[int, int]:
    """(aligned drafts word-for-word equal to the original's for the same request, requests
    both teachers answered): how much the adapter changed what the teacher writes."""
    original = {(r.seed, r.key): r.text for r in records if r.teacher == "original"}
    matched = [
        (r, original[(r.seed, r.key)])
        for r in records
        if r.teacher == "aligned"
        if (r.seed, r.key) in original
    ]
    return sum(r.text == text for r, text in matched), len(matched)


def scores(records: Sequence[DraftRecord], teacher: str, metric: str) -> list[float]:
    values = (getattr(r, metric) for r in records if r.teacher == teacher and r.parsed)
    return [float(v) for v in values if v is not None]


@dataclass(frozen=True)
class Block:
    """The rows of one table block: a seed, or the pooled seeds."""

    name: str
    summaries: dict[str, TeacherSummary]
    accuracy: Diff | None
    margin: Diff | None
    baseline: tuple[float | None, float | None]  # the student with no demonstration
    identical: tuple[int, int]  # see ``identical``


def block(
    name: str, entries: Sequence[dict[str, Any]], n_resamples: int, n_permutations: int
) -> Block:
    """Pool the drafts of ``entries`` (cached seeds) and compare the teachers."""
    records = [DraftRecord(**r) for e in entries for r in e["drafts"]]
    summaries = {}
    for t in TEACHERS:
        rows = sum(e["questions"][t]["rows"] for e in entries)
        ok = sum(e["questions"][t]["parsed"] for e in entries)
        summaries[t] = summarize(t, records, (rows, ok))
    diffs = [
        difference(
            scores(records, "aligned", m),
            scores(records, "original", m),
            n_resamples=n_resamples,
            n_permutations=n_permutations,
        )
        for m in ("accuracy", "margin")
    ]
    # Zero-shot baseline: weighted by held-out items so pooling equals one long list.
    base = []
    for key in ("accuracy", "margin"):
        known = [(e["baseline"][key], e["baseline"]["n"]) for e in entries]
        known = [(v, k) for v, k in known if v is not None]
        n = sum(k for _, k in known)
        base.append(sum(v * k for v, k in known) / n if n else None)
    return Block(name, summaries, diffs[0], diffs[1], (base[0], base[1]), identical(records))


def _num(value: float | None, digits: int = 3, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _rate(k: int, n: int) -> str:
    return f"{k}/{n} ({k / n:.0%})" if n else "0/0"


def _mix(mix: dict[str, float]) -> str:
    shown = list(mix.items())[:3]
    rest = sum(list(mix.values())[3:])
    # A tiny teacher's "label" can be a sentence; the cell only needs to say which one.
    parts = [
        f"{label if len(label) <= 24 else label[:23] + '…'} {share:.0%}" for label, share in shown
    ]
    return " · ".join(parts + ([f"other {rest:.0%}"] if rest else [])) or "–"


def _diff(d: Diff | None) -> str:
    if d is None:
        return "–"
    return f"**{d.value:+.3f}** [{d.low:+.3f}, {d.high:+.3f}] p={d.p:.3f}"


COLUMNS = (
    "seeds",
    "teacher",
    "questions parsed",
    "rationales with `<ans>`",
    "answer labels",
    "words",
    "scored",
    "accuracy",
    "margin",
)


def table_rows(blocks: Sequence[Block]) -> list[list[str]]:
    rows = []
    for b in blocks:
        for t in TEACHERS:
            s = b.summaries[t]
            rows.append(
                [
                    b.name,
                    t,
                    _rate(s.questions_parsed, s.questions),
                    _rate(s.rationales_answered, s.rationales),
                    _mix(s.label_mix),
                    _num(s.words, 1),
                    str(s.scored),
                    _num(s.accuracy),
                    _num(s.margin),
                ]
            )
        o, a = b.summaries["original"], b.summaries["aligned"]
        words = None if a.words is None or o.words is None else a.words - o.words
        diff = [_num(words, 1, sign=True), "", _diff(b.accuracy), _diff(b.margin)]
        rows.append([b.name, "aligned − original", "", "", "", *diff])
        base = ["", "", _num(b.baseline[0]), _num(b.baseline[1])]
        rows.append([b.name, "no demonstration", "", "", "", *base])
    return rows


def markdown_table(rows: Sequence[Sequence[str]], columns: Sequence[str] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _ci_words(d: Diff) -> str:
    where = "excludes 0" if d.low > 0 or d.high < 0 else "includes 0"
    return f"{d.value:+.3f} (95% CI [{d.low:+.3f}, {d.high:+.3f}], {where}; p = {d.p:.3f})"


def findings(pooled: Block, per_seed: Sequence[Block]) -> str:
    """What the numbers say, in words generated from them (so a rerun cannot leave it stale)."""
    o, a = pooled.summaries["original"], pooled.summaries["aligned"]
    where = f"Pooled over {len(per_seed)} seeds" if len(per_seed) > 1 else f"On {per_seed[0].name}"
    out = []
    if pooled.margin is None or pooled.accuracy is None:
        out.append(
            f"The teachers' scores cannot be compared: {a.scored} aligned and {o.scored} "
            "original drafts were scored, and each side needs two or more."
        )
    else:
        out.append(
            f"{where} ({a.scored} aligned and {o.scored} original drafts scored), the "
            f"aligned − original difference in mean margin is {_ci_words(pooled.margin)} and "
            f"in mean accuracy {_ci_words(pooled.accuracy)}."
        )
        signs = {b.name: b.margin.value for b in per_seed if b.margin is not None}
        if len(signs) > 1:
            same = len({v > 0 for v in signs.values()}) == 1
            out.append(
                "Per seed the margin difference is "
                + ", ".join(f"{v:+.3f} ({k})" for k, v in signs.items())
                + (": the same sign." if same else ": the signs differ.")
            )
    if pooled.baseline[0] is not None and o.accuracy is not None and a.accuracy is not None:
        out.append(
            f"With no demonstration the student scores {pooled.baseline[0]:.3f} accuracy "
            f"(margin {_num(pooled.baseline[1])}) on the held-out items; with a draft as "
            f"demonstration, {o.accuracy:.3f} (original) and {a.accuracy:.3f} (aligned)."
        )
    unchanged, matched = pooled.identical
    if matched:
        out.append(
            f"{unchanged} of {matched} aligned rationales are word-for-word the original teacher's "
            "for the same request (question slot, strategy and seed)."
        )
    for name, s in (("original", o), ("aligned", a)):
        if s.rationales:
            top, share = next(iter(s.label_mix.items()), ("–", 0.0))
            out.append(
                f"The {name} teacher put an answer in `<ans>` in {s.rationales_answered} of "
                f"{s.rationales} rationales (most common label among scored drafts: {top!r}, "
                f"{share:.0%}); mean length {_num(s.words, 1)} words."
            )
    answered = o.rationales_answered + a.rationales_answered
    written = o.rationales + a.rationales
    if written and answered < written / 2:
        out.append(
            f"Only {answered} of {written} rationales carry an answer in `<ans>`: for the others "
            "the demonstration shows the question's own target after the rationale text, so "
            "this comparison is mostly about that free text."
        )
    return " ".join(out)


CAVEATS = (
    "It does not show that alignment helps or hurts in general: the sizes are toys (a few "
    "DPO steps on the pairs one small round makes, a 135M student, one task, a few dozen "
    "held-out items), and drafts, not independent teachers, are the unit resampled. "
    "Label mix, length and parse rate differ between the teachers and are reported, not "
    "adjusted for. The pooled test treats drafts of both seeds as one sample and ignores "
    "that seeds differ. Read a CI that includes 0 as 'no difference detected at this size'."
)


def report(
    settings: dict[str, Any],
    entries: Sequence[dict[str, Any]],
    header: dict[str, str],
    n_resamples: int,
    n_permutations: int,
) -> tuple[str, str]:
    """(table, whole markdown document) for cached seed ``entries``.

    ``header``: machine, date, revision and command, as the caller found them.
    """
    per_seed = [block(f"seed {e['seed']}", [e], n_resamples, n_permutations) for e in entries]
    pooled = block("pooled", entries, n_resamples, n_permutations)
    table = markdown_table(table_rows([*per_seed, pooled] if len(entries) > 1 else per_seed))
    config = settings["config"]
    revision = header["revision"]
    stale = [e for e in entries if e.get("git_revision") != revision]
    seeds = ", ".join(str(e["seed"]) for e in entries)
    lines = [
        "# Toy experiment: original vs aligned teacher",
        "",
        f"- **Machine**: {header['machine']}",
        f"- **Date**: {header['date']} (seeds run "
        + ", ".join(
            f"{e['seed']}: {e['finished']}, {e['seconds']['total'] / 60:.1f} min" for e in entries
        )
        + ")",
        f"- **Git revision**: {revision}"
        + "".join(f"; seed {e['seed']} ran at {e['git_revision']}" for e in stale),
        f"- **Command**: `{header['command']}`",
        f"- **Task**: {settings['task']}; teacher {settings['teacher']}, "
        f"student {settings['student']}",
        "- **Settings** (DEMO_CONFIG, then any --set): "
        + ", ".join(f"{k}={v}" for k, v in settings["overrides"].items())
        + f"; scorer {config['scorer']}, pair rule {config['pair_rule']}, "
        f"DPO β {config['dpo_beta']}, lr {config['dpo_lr']}, LoRA r {config['lora_r']}",
        f"- **Seeds**: {seeds}",
        f"- **Statistics**: difference of means over drafts, percentile bootstrap 95% CI "
        f"({n_resamples} resamples, each teacher's drafts resampled on its own), two-sided "
        f"permutation p-value ({n_permutations} permutations or all of them)",
        "",
        "## Plan (fixed before the run)",
        "",
        "Per seed, a fresh study runs draft → score → pairs → align (the app's own stages). "
        "Then the original teacher (no adapter) and the aligned teacher (the align run's LoRA "
        f"adapter) each draft as round {COMPARE_ROUND} would: the same prompts, sampling "
        "settings and per-request seeds (which differ from the seeds of the preference drafts). "
        "The student scores every rationale the drafting stage kept (status ok: it has text; "
        "the `<ans>` column counts those that also answered) as a one-shot demonstration on "
        "the study's "
        f"**test split** ({config['n_test']} items, disjoint from the seed examples and from the "
        f"{config['n_probe']} probe items that built the preferences). Outcomes: mean margin "
        "(log p(gold) − max log p(other), averaged over items) and mean accuracy per teacher; "
        "the difference aligned − original with its CI and p-value. Covariates reported per "
        "teacher: parse rates (parsed / generated), the answer-label mix and mean rationale "
        "length in words.",
        "",
        "## Result",
        "",
        table,
        "",
        "Accuracy and margin cells of the difference rows: **difference** [95% CI] p. "
        "'no demonstration': the student's zero-shot score on the same held-out items.",
        "",
        "Alignment per seed: "
        + "; ".join(
            f"seed {e['seed']}: {e['alignment']['pairs']} pairs, {e['alignment']['steps']} DPO "
            f"steps, last loss {_num((e['alignment']['metrics'] or {}).get('loss'))}, reward "
            f"margin {_num((e['alignment']['metrics'] or {}).get('rewards/margins'))}, "
            f"chosen labels {(e['alignment']['pair_labels'] or {}).get('chosen')}"
            for e in entries
        )
        + ".",
        "",
        "## What this shows / does not show",
        "",
        findings(pooled, per_seed),
        "",
        CAVEATS,
    ]
    errors = [f"seed {e['seed']} {k}: {v}" for e in entries for k, v in e["errors"].items()]
    if errors:
        lines += ["", "Stages that did not succeed: " + "; ".join(errors) + "."]
    return table, "\n".join(lines) + "\n"
