"""The signal check over BIG-bench tasks, for each bundled student, on both score metrics.

    .venv/bin/python experiments/signal_table.py [--tasks T ...] [--students REF ...]
        [--n-probe N] [--demos M] [--parse-calls K] [--screen] [--max-minutes X]
        --out docs/signal-check.md

Each (task, student) row is exactly what the check stage computes before drafts exist
(``teachlab.check.measure`` + ``assess``) on the splits a study of that task gets (seed 0,
3 seed examples, 24 test items, ``--n-probe`` probes): the student zero- and 3-shot against
chance, then ``--demos`` task examples as one-shot demonstrations scored on two probe halves.
``--parse-calls`` teacher calls of the demo study's question prompt per task give the bundled
teacher's parse rate with the demo study's drafting settings (0 skips it). ``--screen`` first
runs the cheap half of the check (zero- and 3-shot against chance, on 32 probes) over every
BIG-bench multiple-choice task that a small study can use, to find where a student is above
chance at all. Results go to a JSON cache beside the table (``<out>.json``); a rerun skips
what is cached, and ``--max-minutes`` stops starting new rows, so the sweep can be split into
short invocations. The table is rewritten from the cache after every row.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STUDENTS = ("bundled:smollm2-135m-instruct", "bundled:gemma-3-270m")
TEACHER = "bundled:gemma-3-270m"
SEED = 0
N_TEST = 24  # the demo study's test split, so the probes are the ones a demo study would get
# Bump when a row's statistics change meaning: cached rows of another version are dropped.
CACHE_VERSION = 2  # 2: chance counts the commonest answer; reliability over 100 random splits
# The screen: tasks a small study can use (seed + probe + test items, short inputs, a few
# choices) and the probes each gets.
SCREEN_PROBES = 32
SCREEN_MIN_EXAMPLES = 80
SCREEN_MAX_CHOICES = 6
SCREEN_MAX_INPUT_CHARS = 350


def bbh_tasks(all_subtasks: bool = False) -> list[str]:
    """The BIG-bench Hard tasks that have a task.json. A task split into subtasks
    (logical_deduction, tracking_shuffled_objects) counts once, by its three-object subtask
    (the shortest, likeliest to show a signal), unless ``all_subtasks``."""
    from teachlab.tasks import list_bigbench
    from teachlab.tasks.bigbench import BBH_TASKS

    names = [t for t in list_bigbench() if t.split("/")[0] in BBH_TASKS]
    if all_subtasks:
        return names
    return [t for t in names if "/" not in t or t.endswith("/three_objects")]


def default_tasks(all_subtasks: bool = False) -> list[str]:
    """The BBH tasks, and the demo study's task when it is not one of them."""
    from teachlab.studies import DEMO_TASK

    names = bbh_tasks(all_subtasks)
    demo = DEMO_TASK.split(":", 1)[1]
    return names if demo in names else [*names, demo]


# --- measuring -----------------------------------------------------------------------------------


def signal_row(
    task_name: str, student: str, loaded: Any, n_probe: int, demos: int
) -> dict[str, Any]:
    """One row: the check stage's measurement and both metrics' results."""
    from teachlab.config import StudyConfig
    from teachlab.rounds import probes_for
    from teachlab.score import Scorer
    from teachlab.stages.check import METRICS, assess, measure
    from teachlab.tasks import make_splits, resolve_task

    task = resolve_task(f"bigbench:{task_name}")
    cfg = StudyConfig()
    parts = make_splits(task, n_seed=cfg.n_seed, n_probe=n_probe, n_test=N_TEST, seed=SEED)
    splits = {"seed": list(parts.seed), "probe": list(parts.probe), "test": list(parts.test)}
    probes = probes_for(task, splits["probe"])
    scorer = Scorer(loaded.model, loaded.tokenizer, task.description, probes, mode="loglik")
    started = time.monotonic()
    m = measure(scorer, task, splits, SEED, shots=cfg.eval_shots, n_demos=demos)
    results = {metric: assess(m, task.chance_rate, metric=metric, seed=SEED) for metric in METRICS}
    return {
        "task": task_name,
        "student": student,
        "n_probe_asked": n_probe,
        "demos_asked": demos,
        "n_examples": len(task.examples),
        "n_probe": len(probes),
        "n_demos": len(m.demos),
        "multiple_choice": task.is_multiple_choice,
        "chance": results["accuracy"].chance,
        "metrics": {metric: r.to_dict() for metric, r in results.items()},
        "seconds": round(time.monotonic() - started, 1),
    }


def screen_tasks() -> list[str]:
    """Every BIG-bench task a small multiple-choice study can use (see the SCREEN_* limits)."""
    from teachlab.errors import DataError
    from teachlab.tasks import list_bigbench, resolve_task

    names = []
    for name in list_bigbench():
        try:
            task = resolve_task(f"bigbench:{name}")
        except DataError:
            continue  # a parent of subtasks, or no usable examples
        if screen_eligible(task):
            names.append(name)
    return names


def screen_eligible(task: Any) -> bool:
    examples = task.examples
    return (
        task.is_multiple_choice
        and len(examples) >= SCREEN_MIN_EXAMPLES
        and max(len(e.choices) for e in examples) <= SCREEN_MAX_CHOICES
        and sum(len(e.input) for e in examples) / len(examples) <= SCREEN_MAX_INPUT_CHARS
    )


def screen_row(task_name: str, student: str, loaded: Any) -> dict[str, Any]:
    """Zero- and 3-shot accuracy on ``SCREEN_PROBES`` probes against the chance baseline,
    with the one-sided exact binomial p-value of the 3-shot accuracy against it."""
    from scipy.stats import binomtest

    from teachlab.config import StudyConfig
    from teachlab.rounds import probes_for
    from teachlab.score import Demo, Scorer
    from teachlab.signalcheck import majority_answer, student_vs_chance
    from teachlab.tasks import make_splits, resolve_task

    task = resolve_task(f"bigbench:{task_name}")
    cfg = StudyConfig()
    parts = make_splits(task, n_seed=cfg.n_seed, n_probe=SCREEN_PROBES, n_test=N_TEST, seed=SEED)
    probes = probes_for(task, list(parts.probe))
    scorer = Scorer(loaded.model, loaded.tokenizer, task.description, probes, mode="loglik")
    started = time.monotonic()
    zero = scorer.score([])
    seeds = [
        Demo(question=task.examples[i].input, answer=task.examples[i].target) for i in parts.seed
    ]
    few = scorer.score(seeds[: cfg.eval_shots])
    chance = student_vs_chance(
        [o.correct for o in zero],
        [o.correct for o in few],
        task.chance_rate,
        majority=majority_answer([p.target for p in probes]),
    )
    block = chance["few_shot"]
    return {
        "task": task_name,
        "student": student,
        "n_examples": len(task.examples),
        "mean_input_chars": round(sum(len(e.input) for e in task.examples) / len(task.examples)),
        "chance": chance,
        "p_value": binomtest(block["k"], block["n"], chance["chance_rate"], "greater").pvalue,
        "seconds": round(time.monotonic() - started, 1),
    }


class CallBudget:
    """A stage context that stops the drafting stage after ``calls`` teacher completions."""

    def __init__(self, calls: int) -> None:
        self.db_path = None
        self.run_id = None
        self.seed = SEED
        self.left = calls

    def progress(self, done: int, total: int, message: str = "") -> None:
        return None

    def log(self, message: str) -> None:
        return None

    def check_cancelled(self) -> None:
        from teachlab.jobs.context import Cancelled

        self.left -= 1  # the stage checks once after each completion
        if self.left <= 0:
            raise Cancelled


def parse_row(
    task_name: str, backend: Any, calls: int, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The demo study's question drafting on this task, for ``calls`` teacher calls
    (``overrides``: drafting settings that differ from the demo study's)."""
    from sqlmodel import select

    from teachlab.config import StudyConfig
    from teachlab.db import Draft, read_session
    from teachlab.jobs.context import Cancelled
    from teachlab.rounds import current_round
    from teachlab.stages.draft import draft_questions
    from teachlab.studies import DEMO_CONFIG, create_study

    demo = StudyConfig.from_dict({**DEMO_CONFIG, **(overrides or {})})
    per_call = 1 if demo.scaffold else demo.questions_per_call
    config = {**DEMO_CONFIG, **(overrides or {}), "n_questions": calls * per_call}
    study = create_study(
        f"parse-{time.monotonic_ns()}",  # a throw-away study in the scratch storage
        f"bigbench:{task_name}",
        teacher=TEACHER,
        config=config,
        seed=SEED,
    )
    rnd = current_round(study.id)  # type: ignore[arg-type]
    started = time.monotonic()
    with contextlib.suppress(Cancelled):  # the call budget is spent
        draft_questions(CallBudget(calls), rnd.id, backend)  # type: ignore[arg-type]
    with read_session() as session:
        rows = session.exec(
            select(Draft).where(Draft.round_id == rnd.id, Draft.kind == "question")
        ).all()
    by_status = {s: sum(d.status == s for d in rows) for s in ("ok", "duplicate", "rejected")}
    called = len({d.idem_key.split(":")[1] for d in rows})
    return {
        "task": task_name,
        "settings": describe_drafting(demo),
        "calls": called,
        "blocks": len(rows),
        **by_status,
        # As the draft stage reports it: a call with no block at all counts as one bad block.
        "parse_rate": (by_status["ok"] + by_status["duplicate"]) / len(rows) if rows else None,
        "seconds": round(time.monotonic() - started, 1),
    }


# --- the cache -----------------------------------------------------------------------------------


def load_cache(path: Path) -> dict[str, Any]:
    empty = {"version": CACHE_VERSION, "signal": {}, "parse": {}, "screen": {}, "invocations": []}
    if path.is_file():
        cache = json.loads(path.read_text(encoding="utf-8"))
        if cache.get("version") == CACHE_VERSION:
            return {**empty, **cache}
    return empty


def save_cache(path: Path, cache: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def signal_key(task: str, student: str, n_probe: int, demos: int) -> str:
    return f"{task}|{student}|probe={n_probe}|demos={demos}|seed={SEED}"


def describe_drafting(cfg: Any) -> str:
    """The drafting settings a parse rate depends on, in words."""
    shape = (
        "scaffolded, one question per call"
        if cfg.scaffold
        else f"{cfg.questions_per_call} questions per call"
        + (", prefilled" if cfg.prefill else ", no prefill")
    )
    return f"T {cfg.question_temperature:g}, {shape}, {cfg.max_new_tokens} tokens"


def parse_key(task: str, calls: int, overrides: dict[str, Any] | None = None) -> str:
    from teachlab.config import StudyConfig
    from teachlab.studies import DEMO_CONFIG

    cfg = StudyConfig.from_dict({**DEMO_CONFIG, **(overrides or {})})
    return f"{task}|{TEACHER}|calls={calls}|{describe_drafting(cfg)}|seed={SEED}"


def parse_sets(pairs: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` drafting settings over the demo study's (JSON values: true, 0.7, 5)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def screen_key(task: str, student: str) -> str:
    return f"{task}|{student}|probe={SCREEN_PROBES}|seed={SEED}"


# --- the table -----------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}".replace("-", "−")


def _acc(block: dict[str, Any] | None, ci: bool) -> str:
    if block is None:
        return "–"
    text = f"{block['accuracy']:.2f}"
    if ci:
        text += f" ({block['ci_low']:.2f}–{block['ci_high']:.2f})"
    if block.get("above_chance"):
        text = f"**{text}**"
    return text


def _rel(result: dict[str, Any]) -> str:
    rel = result["reliability"]
    if rel["reliability"] is None:
        return "–"
    low, high = rel["reliability_ci"]
    ci = f" ({_f(low)}…{_f(high)})" if low is not None and high is not None else ""
    return f"{_f(rel['reliability'])}{ci}"


def _short(student: str) -> str:
    return student.split(":")[-1].replace("-instruct", "")


LEVEL = {"ok": "ok", "warn": "warn", "stop": "STOP"}


def _parse_text(cache: dict[str, Any], task: str) -> str:
    """The parse rate with the demo study's own drafting settings."""
    from teachlab.config import StudyConfig
    from teachlab.studies import DEMO_CONFIG

    demo = describe_drafting(StudyConfig.from_dict(DEMO_CONFIG))
    found = [r for r in cache["parse"].values() if r.get("task") == task and r["settings"] == demo]
    if not found:
        return "–"
    row = max(found, key=lambda r: r["calls"])
    if row["parse_rate"] is None:
        return "–"
    return f"{row['parse_rate']:.0%} ({row['ok']} ok / {row['blocks']})"


HEADER = (
    "| task | student | chance | zero-shot | 3-shot (95% CI) | reliability, accuracy | "
    "reliability, margin | label share | verdict | teacher parses |"
)


def render(cache: dict[str, Any], out_name: str) -> str:
    from teachlab.studies import DEMO_TASK

    lines = [
        "# Signal check over BIG-bench tasks",
        "",
        "Is there anything for the bundled models to learn from on each task? Every row of the",
        "check tables is what `teachlab check` computes before any draft exists, on the probe set",
        "a study of the task gets (study seed 0, 3 seed examples, 24 test items): the student",
        "zero-shot and 3-shot against chance (exact binomial 95% CIs; **bold** = the whole",
        "interval above chance; chance is the better of guessing and always giving the probe",
        "set's commonest answer, marked ᵐ where that is higher), then task examples outside the",
        "probe and test splits, each the single demonstration, scored on two disjoint probe",
        "halves: the split-half reliability of their scores (Spearman–Brown of the half",
        "correlation averaged over 100 random stratified splits, 95% bootstrap CI over",
        "demonstrations) on the accuracy and on the log-prob margin metric, and the share of",
        "score variance the answer label explains (η², accuracy / margin; – where answers do not",
        "repeat). Verdicts are the check's own (accuracy / margin): STOP, warn or ok. The teacher",
        "column is the share of question blocks the bundled teacher (Gemma 3 270M) writes that",
        "parse and pass the target check (duplicates of seed, probe or test items count as",
        "parsed), with the demo study's drafting settings (T 0.7, scaffolded: one question per",
        "call, field by field).",
        "",
        f"Generated by `experiments/signal_table.py`; raw results in `{out_name}.json`.",
        "",
    ]
    invocations = cache.get("invocations", [])
    if invocations:
        lines += [
            f"- machine: {invocations[-1]['machine']}",
            f"- dates: {invocations[0]['date']} to {invocations[-1]['date']}",
            "- commands, in order, each under `flock /tmp/teachlab-cpu.lock`:",
            *[f"  - `{inv['command']}`" for inv in invocations],
            "",
        ]
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for row in cache["signal"].values():
        groups.setdefault((row["n_probe_asked"], row["demos_asked"]), []).append(row)
    reasons: list[str] = []
    for (n_probe, demos), rows in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        minutes = sum(r["seconds"] for r in rows) / 60
        lines += [
            f"## {n_probe} probe items, {demos} demonstrations",
            "",
            f"{len(rows)} rows, {minutes:.0f} min of compute for the students. "
            + _group_summary(rows),
            "",
            HEADER,
            "|" + "---|" * 10,
        ]
        order = {s: i for i, s in enumerate(STUDENTS)}
        for row in sorted(rows, key=lambda r: (r["task"], order.get(r["student"], 9))):
            task, student = row["task"], _short(row["student"])
            shown = f"{task} (demo)" if task == DEMO_TASK.split(":", 1)[1] else task
            acc, mar = row["metrics"]["accuracy"], row["metrics"]["margin"]
            chance = row["chance"]
            shares = f"{_f(acc['label_share'])} / {_f(mar['label_share'])}"
            verdicts = f"{LEVEL[acc['verdict']['level']]} / {LEVEL[mar['verdict']['level']]}"
            mark = "ᵐ" if chance.get("baseline") == "majority" else ""
            lines.append(
                f"| {shown} | {student} | {_f(chance['chance_rate'])}{mark} | "
                f"{_acc(chance['zero_shot'], False)} | {_acc(chance['few_shot'], True)} | "
                f"{_rel(acc)} | {_rel(mar)} | {shares} | {verdicts} | "
                f"{_parse_text(cache, task)} |"
            )
            for metric, result in (("accuracy", acc), ("margin", mar)):
                for reason in result["verdict"]["reasons"]:
                    reasons.append(f"- {task}, {student}, {n_probe} probes, {metric}: {reason}")
        lines.append("")
    lines += render_screen(cache)
    lines += render_parse(cache)
    lines += ["<details><summary>The check's reasons, row by row</summary>", ""]
    lines += [*reasons, "", "</details>", ""]
    return "\n".join(lines)


def _group_summary(rows: list[dict[str, Any]]) -> str:
    """Which rows clear chance, and which pass the check on each metric."""

    def names(picked: list[dict[str, Any]]) -> str:
        return ", ".join(f"{r['task']} ({_short(r['student'])})" for r in picked) or "none"

    above = [r for r in rows if (r["chance"]["few_shot"] or {}).get("above_chance")]
    text = f"Student above chance (the whole 3-shot CI): {names(above)}."
    for metric in ("accuracy", "margin"):
        ok = [r for r in rows if r["metrics"][metric]["verdict"]["level"] == "ok"]
        text += f" Verdict ok on the {metric}: {names(ok)}."
    return text


def render_parse(cache: dict[str, Any]) -> list[str]:
    """Every teacher parse measurement: a task's rate under each drafting setting tried."""
    rows = sorted(cache.get("parse", {}).values(), key=lambda r: (r["task"], r["settings"]))
    if not rows:
        return []
    lines = [
        "## The bundled teacher's questions: how many parse",
        "",
        "Each row: the demo study's question prompt on the task for a few teacher calls, with "
        "the drafting settings shown; a block parses when it has an input and a target that "
        "passes the target check (options listed, target among them).",
        "",
        "| task | drafting | calls | blocks | ok | duplicate | parse rate | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate = "–" if r["parse_rate"] is None else f"{r['parse_rate']:.0%}"
        lines.append(
            f"| {r['task']} | {r['settings']} | {r['calls']} | {r['blocks']} | {r['ok']} | "
            f"{r['duplicate']} | {rate} | {r['seconds']:.0f} |"
        )
    return [*lines, ""]


SCREEN_SHOWN = 25


def render_screen(cache: dict[str, Any]) -> list[str]:
    rows = sorted(cache.get("screen", {}).values(), key=lambda r: (r["p_value"], r["task"]))
    if not rows:
        return []
    minutes = sum(r["seconds"] for r in rows) / 60
    above = [r for r in rows if r["chance"]["few_shot"]["above_chance"]]
    lines = [
        f"## Screen: where is a student above chance at all? ({SCREEN_PROBES} probes)",
        "",
        f"Every BIG-bench multiple-choice task with at least {SCREEN_MIN_EXAMPLES} examples, at "
        f"most {SCREEN_MAX_CHOICES} choices and inputs of at most {SCREEN_MAX_INPUT_CHARS} "
        f"characters on average: {len(rows)} (task, student) rows, {minutes:.0f} min of compute; "
        f"{len(above)} have the whole 3-shot CI above chance. The {min(SCREEN_SHOWN, len(rows))} "
        "with the smallest one-sided binomial p-value against chance:",
        "",
        "| task | student | examples | chance | zero-shot | 3-shot (95% CI) | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows[:SCREEN_SHOWN]:
        chance = row["chance"]
        mark = "ᵐ" if chance["baseline"] == "majority" else ""
        lines.append(
            f"| {row['task']} | {_short(row['student'])} | {row['n_examples']} | "
            f"{_f(chance['chance_rate'])}{mark} | {_acc(chance['zero_shot'], False)} | "
            f"{_acc(chance['few_shot'], True)} | {row['p_value']:.1e} |"
        )
    return [*lines, ""]


# --- the command ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tasks", nargs="*", help="BIG-bench task names (default: every BBH one and the demo's)"
    )
    parser.add_argument("--all-subtasks", action="store_true", help="every subtask, not one")
    parser.add_argument("--students", nargs="*", default=list(STUDENTS))
    parser.add_argument("--n-probe", type=int, default=16)
    parser.add_argument("--demos", type=int, default=24)
    parser.add_argument("--parse-calls", type=int, default=4, help="0: no teacher parse rates")
    parser.add_argument(
        "--parse-set",
        action="append",
        metavar="KEY=VALUE",
        help="a drafting setting over the demo study's for the parse rates (repeatable)",
    )
    parser.add_argument("--no-signal", action="store_true", help="only the teacher parse rates")
    parser.add_argument(
        "--screen", action="store_true", help="first screen every usable multiple-choice task"
    )
    parser.add_argument("--max-minutes", type=float, default=0, help="0: no limit")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    started = time.monotonic()
    deadline = started + 60 * args.max_minutes if args.max_minutes else math.inf

    import torch

    from teachlab.settings import get_settings

    torch.set_num_threads(2)
    settings = get_settings()
    # Throw-away studies for the parse rates go to a temporary storage folder; the models and
    # task data stay where they are cached.
    models_dir = settings.model_cache or settings.storage / "models"
    data_dir = settings.data_cache or settings.storage / "data"
    os.environ["TEACHLAB_MODEL_CACHE"] = str(models_dir.resolve())
    os.environ["TEACHLAB_DATA_CACHE"] = str(data_dir.resolve())
    scratch = tempfile.TemporaryDirectory(prefix="signal-table-")
    os.environ["TEACHLAB_STORAGE"] = scratch.name
    get_settings.cache_clear()

    tasks = args.tasks or default_tasks(args.all_subtasks)
    out = Path(args.out)
    cache_path = out.with_name(out.name + ".json")
    cache = load_cache(cache_path)
    cache["invocations"].append(
        {
            "command": shlex.join(["python", *sys.argv]),
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads), Python "
            f"{platform.python_version()}",
        }
    )

    def write() -> None:
        save_cache(cache_path, cache)
        out.write_text(render(cache, out.name), encoding="utf-8")

    def out_of_time(what: str) -> bool:
        if time.monotonic() < deadline:
            return False
        print(f"time budget spent; stopping before {what} (rerun to continue)", flush=True)
        return True

    from teachlab import models

    if args.parse_calls and not out_of_time("the teacher parse rates"):
        overrides = parse_sets(args.parse_set)
        todo = [t for t in tasks if parse_key(t, args.parse_calls, overrides) not in cache["parse"]]
        if todo:
            from teachlab.backends.hf import HFBackend

            backend = HFBackend(TEACHER)
            for task in todo:
                if out_of_time(f"parsing {task}"):
                    break
                row = parse_row(task, backend, args.parse_calls, overrides)
                cache["parse"][parse_key(task, args.parse_calls, overrides)] = row
                print(f"teacher on {task}: {row}", flush=True)
                write()
    if args.screen:
        names = screen_tasks()
        for student in args.students:
            todo = [t for t in names if screen_key(t, student) not in cache["screen"]]
            if not todo or out_of_time(f"screening with {student}"):
                continue
            loaded = models.load(student)
            torch.set_num_threads(2)
            for task in todo:
                if out_of_time(f"screening {task} with {student}"):
                    break
                row = screen_row(task, student, loaded)
                cache["screen"][screen_key(task, student)] = row
                print(
                    f"screen {task} | {_short(student)} | {row['seconds']} s | few-shot "
                    f"{_acc(row['chance']['few_shot'], True)} | p {row['p_value']:.1e}",
                    flush=True,
                )
                write()
    for student in [] if args.no_signal else args.students:
        todo = [
            t
            for t in tasks
            if signal_key(t, student, args.n_probe, args.demos) not in cache["signal"]
        ]
        if not todo or out_of_time(f"loading {student}"):
            continue
        loaded = models.load(student)
        torch.set_num_threads(2)
        for task in todo:
            if out_of_time(f"{task} with {student}"):
                break
            row = signal_row(task, student, loaded, args.n_probe, args.demos)
            cache["signal"][signal_key(task, student, args.n_probe, args.demos)] = row
            verdicts = {m: r["verdict"]["level"] for m, r in row["metrics"].items()}
            print(
                f"{task} | {_short(student)} | {row['seconds']} s | few-shot "
                f"{_acc(row['chance']['few_shot'], True)} | {verdicts}",
                flush=True,
            )
            write()
    write()
    print(f"wrote {out} and {cache_path} in {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
