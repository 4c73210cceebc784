"""Toy experiment: do the aligned teacher's drafts teach the student better than the original's?

    python experiments/toy.py --seeds 0 1 --out docs/toy-experiment.md

Per seed, a study in a fresh storage folder runs draft → score → pairs → align with the
project's job machinery. Then the original teacher (the round's, no adapter) and the aligned
teacher (the align run's adapter) each draft as round 1 would, with identical prompts, sampling
settings and seeds, and the student scores every kept rationale on the study's held-out test
split (never used for preferences). Each seed is cached in a JSON file next to ``--out``, so a
run resumes (one seed per invocation if you like) and the table is built from every requested
seed. The analysis (experiments/toy_report.py) was fixed before the first run; the table reports
what it finds. Heavy (about 13 min a seed on 2 cores): run it under the shared CPU lock,
``flock /tmp/teachlab-cpu.lock python experiments/toy.py ...``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.toy_report import COMPARE_ROUND, DraftRecord, report

ROOT = Path(__file__).resolve().parents[1]

if TYPE_CHECKING:
    from teachlab.db import Round, Run, Study

PIPELINE = ("draft", "score", "pairs", "align")
THREADS = 2

# ---------------------------------------------------------------- running a seed (models)


def _use_storage(storage: Path) -> None:
    """Point TeachLab at a fresh storage folder (shared model and data caches)."""
    from teachlab.db import init_db
    from teachlab.db.store import reset
    from teachlab.settings import get_settings

    os.environ["TEACHLAB_STORAGE"] = str(storage)
    os.environ.setdefault("TEACHLAB_MODEL_CACHE", str(ROOT / "storage" / "models"))
    os.environ.setdefault("TEACHLAB_DATA_CACHE", str(ROOT / "storage" / "data"))
    os.environ.setdefault("TEACHLAB_THREADS", str(THREADS))
    reset()
    get_settings.cache_clear()
    init_db()


class _Echo:
    """Stage progress on stderr, at most every few seconds."""

    def __init__(self, label: str) -> None:
        self.label, self.last = label, 0.0

    def __call__(self, done: int, total: int, message: str) -> None:
        now = time.monotonic()
        if now - self.last >= 10 or (total and done >= total):
            self.last = now
            print(f"  [{self.label}] {done}/{total} {message[:70]}", file=sys.stderr, flush=True)


def run_stage(study_id: int, round_id: int, kind: str, seed: int) -> Run:
    """One stage as `teachlab run stage` runs it: a recorded run executed in this process."""
    from teachlab.jobs import runs
    from teachlab.stages.launch import execute_here

    run = runs.create_run(
        study_id, kind, round_id=round_id, seed=seed, requested_by="experiments/toy.py"
    )
    return execute_here(run.id, echo=_Echo(kind))  # type: ignore[arg-type]


def _stage_ok(study_id: int, round_id: int, kind: str, seed: int) -> dict[str, Any]:
    final = run_stage(study_id, round_id, kind, seed)
    if final.status != "succeeded":
        raise SystemExit(
            f"seed {seed}: stage {kind} (run #{final.id}) {final.status}: {final.error}"
        )
    return dict(final.result)


def heldout_copy(study: Study, rnd: Round, label: str, adapter: str | None) -> tuple[int, int]:
    """A study whose round 1 drafts with ``adapter`` and whose probe set is the test split.

    Same task, models, settings, seed and seed examples as ``study``, so the drafting prompts
    and per-request seeds are identical for both teachers; the score stage then scores on the
    held-out test items (the preference probes are kept under ``preference_probe``).
    """
    from teachlab.db import Round, Study, write_session

    splits = {**study.splits, "preference_probe": study.splits["probe"]}
    splits["probe"] = list(study.splits["test"])
    with write_session() as session:
        copy = Study(
            name=f"{study.name}-{label}",
            description=f"Held-out comparison: the {label} teacher of {study.name!r}.",
            task_ref=study.task_ref,
            teacher=study.teacher,
            student=study.student,
            backend=study.backend,
            seed=study.seed,
            config=dict(study.config),
            splits=splits,
        )
        session.add(copy)
        session.flush()
        new = Round(
            study_id=copy.id,  # type: ignore[arg-type]
            index=COMPARE_ROUND,
            teacher=rnd.teacher,
            teacher_adapter=adapter,
            student=rnd.student,
            student_adapter=rnd.student_adapter,
        )
        session.add(new)
        session.flush()
        return int(copy.id), int(new.id)  # type: ignore[arg-type]


def collect(round_id: int, seed: int, teacher: str) -> tuple[list[DraftRecord], dict[str, int]]:
    from sqlmodel import col, select

    from teachlab.db import Draft, read_session

    with read_session() as session:
        drafts = session.exec(
            select(Draft)
            .where(Draft.round_id == round_id, Draft.phase == "draft")
            .order_by(col(Draft.id))
        ).all()
    questions = [d for d in drafts if d.kind == "question"]
    slots = {q.id: q.idem_key for q in questions}
    records = [
        DraftRecord(
            seed=seed,
            teacher=teacher,
            key=f"{slots.get(d.parent_id, '?')}/{d.strategy}",
            text=hashlib.sha256(d.raw_output.encode()).hexdigest()[:16],
            parsed=d.status == "ok",
            label=d.answer,
            words=len((d.rationale or "").split()),
            accuracy=d.score,
            margin=d.margin_score,
        )
        for d in drafts
        if d.kind == "rationale"
    ]
    parsed = sum(q.status in ("ok", "duplicate") for q in questions)
    return records, {"rows": len(questions), "parsed": parsed}


def run_seed(seed: int, task_ref: str, config: dict[str, Any], keep: bool) -> dict[str, Any]:
    """The pipeline and the comparison for one seed; returns its cache entry."""
    from teachlab.rounds import current_round
    from teachlab.stages.score import baseline_score
    from teachlab.studies import create_study, get_study

    storage = Path(tempfile.mkdtemp(prefix=f"teachlab-toy-seed{seed}-"))
    _use_storage(storage)
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    study = create_study(f"toy-seed{seed}", task_ref, seed=seed, config=config)
    rnd = current_round(study.id)  # type: ignore[arg-type]
    results = {}
    for kind in PIPELINE:
        print(f"seed {seed}: {kind}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        results[kind] = _stage_ok(study.id, rnd.id, kind, seed)  # type: ignore[arg-type]
        seconds[kind] = round(time.perf_counter() - t0, 1)
    study = get_study(study.id)  # type: ignore[arg-type]  # as the stages left it
    drafts: list[DraftRecord] = []
    questions: dict[str, dict[str, int]] = {}
    errors: dict[str, str] = {}
    baseline: dict[str, Any] = {"accuracy": None, "margin": None, "n": len(study.splits["test"])}
    for teacher, adapter in (
        ("original", rnd.teacher_adapter),
        ("aligned", results["align"]["adapter"]),
    ):
        copy_id, round_id = heldout_copy(study, rnd, teacher, adapter)
        for kind in ("draft", "score"):
            print(f"seed {seed}: {teacher} teacher, {kind}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            final = run_stage(copy_id, round_id, kind, seed)
            seconds[f"{teacher} {kind}"] = round(time.perf_counter() - t0, 1)
            if final.status != "succeeded":
                # A teacher that writes nothing usable is a finding (parse rate 0), not a crash.
                errors[f"{teacher} {kind}"] = final.error or final.status
                break
        else:
            if baseline["accuracy"] is None:
                mode = config["scorer"]
                baseline["accuracy"] = baseline_score(round_id, mode)
                baseline["margin"] = baseline_score(round_id, mode, margin=True)
        records, questions[teacher] = collect(round_id, seed, teacher)
        drafts += records
    seconds["total"] = round(time.perf_counter() - started, 1)
    if keep:
        print(f"seed {seed}: storage kept at {storage}", file=sys.stderr)
    else:
        shutil.rmtree(storage, ignore_errors=True)
    align = results["align"]
    return {
        "seed": seed,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": seconds,
        "alignment": {
            "pairs": results["pairs"].get("pairs"),
            "pair_labels": results["pairs"].get("label_mix"),
            "steps": align.get("steps"),
            "metrics": align.get("metrics"),
        },
        "preference_drafts": results["draft"].get("rationales"),
        "questions": questions,
        "baseline": baseline,
        "errors": errors,
        "drafts": [asdict(r) for r in drafts],
    }


# ---------------------------------------------------------------- cache, report, command line


def settings_for(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that decides a seed's result (read at run time: DEMO_CONFIG may change)."""
    from teachlab.cli.common import parse_sets
    from teachlab.config import StudyConfig
    from teachlab.settings import get_settings
    from teachlab.studies import DEMO_CONFIG

    overrides = {**DEMO_CONFIG, **parse_sets(args.set)}
    config = StudyConfig.from_dict(overrides).to_dict()
    settings = get_settings()
    return {
        "task": args.task,
        "teacher": settings.teacher,
        "student": settings.student,
        "config": config,
        "overrides": overrides,
    }


def fingerprint(settings: dict[str, Any]) -> str:
    """Cached seeds count only for the same settings and the same record layout."""
    keep = {k: settings[k] for k in ("task", "teacher", "student", "config")}
    text = json.dumps({**keep, "records": list(DraftRecord.__dataclass_fields__)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_cache(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"seeds": {}}
    return dict(json.loads(path.read_text(encoding="utf-8")))


def save_cache(path: Path, cache: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)  # a killed run never leaves half a cache


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5, check=False)
        for line in out.stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{model}, {os.cpu_count()} cores, {THREADS} torch threads, {platform.platform()}"


def main(argv: Sequence[str] | None = None) -> int:
    from teachlab.jobs.runs import git_revision
    from teachlab.studies import DEMO_TASK

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--task", default=DEMO_TASK, help="Task reference (default: the demo's).")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="A study setting over DEMO_CONFIG."
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "toy-experiment.md")
    parser.add_argument("--cache", type=Path, help="Per-seed results (default: --out as .json).")
    parser.add_argument("--fresh", action="store_true", help="Rerun seeds found in the cache.")
    parser.add_argument("--table-only", action="store_true", help="Only cached seeds; no models.")
    parser.add_argument("--keep", action="store_true", help="Keep each seed's storage folder.")
    parser.add_argument("--bootstrap", type=int, default=2000, help="Bootstrap resamples.")
    parser.add_argument("--permutations", type=int, default=10000, help="Permutations.")
    args = parser.parse_args(argv)
    command = shlex.join(
        ["python", "experiments/toy.py", *(sys.argv[1:] if argv is None else argv)]
    )

    settings = settings_for(args)
    key = fingerprint(settings)
    cache_path = args.cache or args.out.with_suffix(".json")
    cache = load_cache(cache_path)
    for seed in args.seeds:
        found = cache["seeds"].get(str(seed))
        if found and found.get("fingerprint") == key and not args.fresh:
            print(f"seed {seed}: cached ({found['finished']})", file=sys.stderr)
            continue
        if args.table_only:
            raise SystemExit(
                f"seed {seed} is not in {cache_path} for these settings; run it first."
            )
        import torch

        torch.set_num_threads(THREADS)
        entry = run_seed(seed, settings["task"], settings["config"], args.keep)
        entry.update(fingerprint=key, git_revision=git_revision())
        cache["seeds"][str(seed)] = entry
        save_cache(cache_path, cache)
        print(f"seed {seed}: done in {entry['seconds']['total'] / 60:.1f} min", file=sys.stderr)
    entries = [cache["seeds"][str(s)] for s in args.seeds]
    header = {
        "machine": machine(),
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "revision": git_revision() or "unknown",
        "command": command,
    }
    table, document = report(settings, entries, header, args.bootstrap, args.permutations)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(document, encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
