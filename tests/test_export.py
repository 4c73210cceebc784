"""Exports and imports on a real study store: DPO/SFT/draft rows, the three formats, the dataset
card, safe names, atomic writes, the Hub plan, imports with schema errors, and (slow) a DPOTrainer
step on an exported file, loaded with `datasets` and used unchanged."""

from __future__ import annotations

import json
import os
import zipfile
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import pytest
from builders import draft, pair, probe_results, rationale, round_, study
from conftest import SHARED_MODELS
from sqlmodel import col, select

from teachlab import __version__
from teachlab import export as ex
from teachlab.config import StudyConfig
from teachlab.db import AnnotationEvent, Draft, Pair, Round, Study, read_session, write_session
from teachlab.errors import ConfigError, ConflictError, DataError, NotFoundError
from teachlab.export import card as card_mod
from teachlab.export.rows import sha256
from teachlab.prompts import (
    plain_messages,
    question_messages,
    question_prefill,
    question_text,
    render_chat,
)

TEACHER = "bundled:smollm2-135m-instruct"
ADAPTER = "ab" * 32
SEEDS = [{"input": "Today is 1 May. What is tomorrow?", "target": "2 May"}] * 3
PAIR_FIELDS = (
    "level",
    "rule",
    "prompt",
    "chosen",
    "rejected",
    "chosen_score",
    "rejected_score",
    "margin",
    "rank",
    "source",
    "status",
    "annotator",
)


@cache
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(SHARED_MODELS / "smollm2-135m-instruct")


def new_study(name: str) -> tuple[Study, Round]:
    """A study of the date task with the default configuration, and its round 0."""
    made = study(
        name,
        task_ref="bigbench:date_understanding",
        teacher=TEACHER,
        student=TEACHER,
        config=StudyConfig().to_dict(),
        splits={"seed": [0, 1, 2], "probe": [3, 4], "test": [5, 6, 7]},
    )
    return made, round_(made)


def populate() -> dict[str, int]:
    """Study "src": round 0 (base teacher) and round 1 (an aligned adapter), with real prompts."""
    tok = tokenizer()
    prefill = question_prefill(len(SEEDS))
    q_prompt = render_chat(tok, question_messages("dates", "Date questions.", SEEDS, 1), prefill)
    question = question_text("Today is 3 May. What was yesterday?", ["2 May", "4 May"])
    erased = render_chat(tok, plain_messages(question))
    made, r0 = new_study("src")
    r1 = round_(made, 1, teacher_adapter="/runs/7/adapter")
    asked = {"prompt": q_prompt, "prefill": prefill}
    qa, qb = draft(r0, **asked, score=0.8), draft(r0, **asked, score=0.2)
    ra = draft(
        r0, "rationale", parent=qa, raw_output="So <ans>2 May</ans>", score=1.0, margin_score=0.5
    )
    rb = draft(r0, "rationale", parent=qa, raw_output="<ans>4 May</ans>", score=0.0)
    qc = draft(r1, **asked, adapter_hash=ADAPTER)
    qd = draft(r1, **asked, adapter_hash=ADAPTER)
    probe_results(
        r0,
        "TF",
        draft=ra,
        indices=[3, 4],
        predicted=["2 May", "4 May"],
        gold_logprobs=[-0.5, -1.5],
        margins=[0.7, -0.3],
    )
    pairs = {
        "p_question": pair(
            r0,
            qa,
            qb,
            prompt=q_prompt,
            chosen="Today is 9 May.</input><target>10 May</target></Question_4>",
            rejected="Today</input><target>x</target></Question_4>",
            margin=0.6,
            status="approved",
            annotator="alice",
        ),
        "p_rationale": pair(r0, ra, rb, prompt=erased, margin=1.0),
        "p_rejected": pair(
            r0,
            "bad",
            "worse",
            prompt=erased,
            chosen_score=0.5,
            rejected_score=0.4,
            margin=0.1,
            status="rejected",
            annotator="alice",
        ),
        "p_edited": pair(
            r1,
            qc,
            qd,
            prompt=q_prompt,
            chosen="Edited by a human.</input><target>1 May</target></Question_4>",
            rejected="x</input><target>y</target></Question_4>",
            chosen_score=0.6,
            rejected_score=0.3,
            margin=0.3,
            rank=2,
            source="human",
            status="edited",
            annotator="bob",
        ),
    }
    # The tailored set (round 1): one usable example, one rejected rationale.
    tq = draft(
        r1,
        phase="tailored",
        input="Today is 3 May. What was yesterday?",
        target="2 May",
        choices=["2 May", "4 May"],
    )
    tr = rationale(
        tq,
        "Yesterday is one day before 3 May. <ans>2 May</ans>",
        "2 May",
        strategy="plain",
        adapter_hash=ADAPTER,
    )
    draft(r1, "rationale", phase="tailored", parent=tq, status="rejected")
    ids = {"study": made.id, "ra": ra.id, "tr": tr.id, "tq": tq.id}
    return ids | {key: p.id for key, p in pairs.items()}  # type: ignore[misc]


@pytest.fixture
def src(db_path: Path) -> dict[str, int]:
    return populate()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def stored_pairs(db: Path, study: str) -> list[tuple[Any, ...]]:
    with read_session() as s:
        pairs = s.exec(
            select(Pair)
            .join(Round, col(Round.id) == Pair.round_id)
            .join(Study, col(Study.id) == Round.study_id)
            .where(Study.name == study)
        ).all()
    return sorted(tuple(getattr(p, f) for f in PAIR_FIELDS) for p in pairs)


# --------------------------------------------------------------------- names and paths


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "a/../../b",
        "..\\..\\windows",
        "．．／．．／etc",  # full-width dots and slash: NFKC makes them ../../
        "\u2025/etc",  # TWO DOT LEADER normalises to ".."
        "ok name\x00with\nbytes",
        ".hidden",
    ],
)
def test_hostile_names_stay_inside_the_exports_folder(name: str) -> None:
    root = ex.export_dir("probe").parent
    path = ex.export_dir(name)
    assert path.parent == root
    assert set(path.name) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
    )
    assert ".." not in path.name and not path.name.startswith(".")


@pytest.mark.parametrize("name", ["..", ".", "", "/", "\u2025", "名前", "../..//"])
def test_names_with_nothing_usable_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="no usable characters"):
        ex.export_dir(name)


def test_sanitising_keeps_ordinary_names() -> None:
    assert ex.safe_name("demo-r0_dpo.v2") == "demo-r0_dpo.v2"
    assert ex.safe_name("my study / round 1") == "my_study_round_1"
    assert ex.safe_name("../../etc/passwd") == "etc_passwd"


def test_a_symlink_in_the_exports_folder_is_refused(tmp_path: Path) -> None:
    root = ex.export_dir("probe").parent
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "evil").symlink_to(outside)
    with pytest.raises(ConfigError, match="outside the exports folder"):
        ex.export_dir("evil")


# --------------------------------------------------------------------- DPO


def test_dpo_jsonl_is_byte_exact_with_ratings_and_provenance(
    src: dict[str, int], db_path: Path
) -> None:
    result = ex.export(ex.Selection("src"), "dpo", "jsonl", name="d")
    assert result.form == "standard" and result.rows == 3
    names = {p for p, _ in result.files}
    assert names == {"dpo.jsonl", "README.md", "teachlab_export.json", "dataset_info.json"}
    rows = {r["pair_id"]: r for r in read_jsonl(result.path / "dpo.jsonl")}
    assert set(rows) == {src["p_question"], src["p_rationale"], src["p_edited"]}  # not rejected
    with read_session() as s:
        for pair_id, row in rows.items():
            pair = s.get(Pair, pair_id)
            assert row["prompt"] == row["prompt_text"] == pair.prompt  # byte-exact
            assert (row["chosen"], row["rejected"]) == (pair.chosen, pair.rejected)
            assert row["prompt_id"] == sha256(pair.prompt)
            assert (row["chosen_rating"], row["rejected_rating"]) == (
                pair.chosen_score,
                pair.rejected_score,
            )
    q = rows[src["p_question"]]
    assert q["prompt"].endswith("<|im_start|>assistant\n<Question_4><input>")
    assert (q["chosen_model"], q["level"], q["rule"]) == (TEACHER, "question", "arte")
    assert (q["source"], q["status"], q["annotator"], q["round"]) == (
        "auto",
        "approved",
        "alice",
        0,
    )
    edited = rows[src["p_edited"]]
    assert edited["chosen_model"] == f"{TEACHER}+adapter:{ADAPTER[:16]}"
    assert (edited["source"], edited["status"], edited["annotator"]) == ("human", "edited", "bob")
    assert rows[src["p_rationale"]]["annotator"] is None
    lf = json.loads((result.path / "dataset_info.json").read_text())
    assert lf == {
        "d": {
            "file_name": "dpo.jsonl",
            "formatting": "alpaca",
            "ranking": True,
            "columns": {
                "prompt": "prompt_text",
                "chosen": "chosen_text",
                "rejected": "rejected_text",
            },
        }
    }


def test_dpo_loads_with_datasets_json(src: dict[str, int], tmp_path: Path) -> None:
    from datasets import load_dataset

    result = ex.export(ex.Selection("src"), "dpo", "jsonl", name="d")
    data = load_dataset(
        "json",
        data_files=str(result.path / "dpo.jsonl"),
        split="train",
        cache_dir=str(tmp_path / "hf"),
    )
    assert data.num_rows == 3
    assert {"prompt", "chosen", "rejected", "prompt_id", "chosen_rating", "annotator"} <= set(
        data.column_names
    )
    assert data[0]["prompt"] == read_jsonl(result.path / "dpo.jsonl")[0]["prompt"]


@pytest.mark.parametrize("fmt", ["parquet", "datasets"])
def test_parquet_and_datasets_hold_the_same_rows_as_jsonl(src: dict[str, int], fmt: str) -> None:
    from datasets import load_from_disk

    jsonl = read_jsonl(ex.export(ex.Selection("src"), "dpo", "jsonl").path / "dpo.jsonl")
    result = ex.export(ex.Selection("src"), "dpo", fmt, name=f"x-{fmt}")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(result.path / "dpo.parquet").to_pylist()
        assert "dataset_info.json" in {p for p, _ in result.files}
    else:
        rows = load_from_disk(str(result.path)).to_list()
        assert "state.json" in {p for p, _ in result.files}
    assert rows == jsonl
    assert ex.load_records(result.path) == jsonl  # the import reader sees the same rows


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (dict(round=0), {"p_question", "p_rationale"}),
        (dict(round=1), {"p_edited"}),
        (dict(statuses=("rejected",)), {"p_rejected"}),
        (dict(level="rationale"), {"p_rationale"}),
        (dict(source="human"), {"p_edited"}),
        (dict(min_margin=0.5), {"p_question", "p_rationale"}),
        (
            dict(round=0, statuses=("approved", "rejected"), min_margin=0.05),
            {"p_question", "p_rejected"},
        ),
    ],
)
def test_selection_filters(src: dict[str, int], selection: dict, expected: set[str]) -> None:
    result = ex.export(ex.Selection("src", **selection), "dpo", "jsonl")
    got = {r["pair_id"] for r in read_jsonl(result.path / "dpo.jsonl")}
    assert got == {src[k] for k in expected}


def test_bad_selection_and_empty_results_are_clear_errors(src: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match="Unknown pair status"):
        ex.Selection("src", statuses=("maybe",))
    with pytest.raises(NotFoundError, match="no round 7"):
        ex.export(ex.Selection("src", round=7))
    with pytest.raises(NotFoundError, match="No study"):
        ex.export(ex.Selection("nope"))
    with pytest.raises(DataError, match="Nothing to export"):
        ex.export(ex.Selection("src", min_margin=5.0))
    with pytest.raises(ConfigError, match="format"):
        ex.export(ex.Selection("src"), "dpo", "csv")


def test_dataset_card_records_configuration_models_templates_counts_and_version(
    src: dict[str, int],
) -> None:
    result = ex.export(ex.Selection("src"), "dpo", "jsonl", name="carded")
    text = (result.path / "README.md").read_text(encoding="utf-8")
    assert text == result.card
    head = text.split("---\n")[1]
    assert 'path: "dpo.jsonl"' in head and "- dpo" in head and "- teachlab" in head
    assert f"TeachLab {__version__}" in text
    assert '"n_questions": 8' in text and '"pair_rule": "arte"' in text  # study configuration
    assert f"`{TEACHER}`" in text and "`/runs/7/adapter`" in text  # models per round
    assert "question@2" in text and "plain@1" in text and "Let's think step by step" in text
    assert "Strategy system prompts" in text and "`eliminate`" in text
    assert "**level**: question: 2, rationale: 1" in text
    assert "**status**: approved: 1, edited: 1, proposed: 1" in text
    assert "**source**: auto: 2, human: 1" in text
    manifest = json.loads((result.path / "teachlab_export.json").read_text())
    created = manifest["created"]
    assert f"exported {created}" in text  # the export's date
    with read_session() as s:
        study = s.get(Study, src["study"])
    assert study.created_at.isoformat(timespec="seconds") in text  # the study's date
    assert "Form: trl standard (text)" in text and "LLaMA-Factory" in text
    # The ratings say what the study scored: probe accuracy here, the log-prob margin where
    # pairs are built on it.
    assert "scores of each text (the student's accuracy on the probes" in text
    with write_session() as s:
        row = s.get(Study, src["study"])
        row.config = {**row.config, "pair_metric": "margin"}  # type: ignore[union-attr]
        s.add(row)
    margin = ex.export(ex.Selection("src"), "dpo", "jsonl", name="carded-margin").card
    assert "scores of each text (the mean log-prob margin of the gold answer" in margin
    assert "probe accuracy" not in margin.split("## Columns")[1].split("## ")[0]
    assert manifest | {"created": None} == {
        "teachlab_version": __version__,
        "kind": "dpo",
        "format": "jsonl",
        "form": "standard",
        "rows": 3,
        "data_files": "dpo.jsonl",
        "study": {"id": src["study"], "name": "src"},
        "selection": {
            "study": "src",
            "round": None,
            "statuses": ["proposed", "approved", "overridden", "edited"],
            "level": None,
            "source": None,
            "min_margin": None,
        },
        "created": None,
    }


def test_conversational_rebuilds_messages_that_render_to_the_exact_prompt(
    src: dict[str, int],
) -> None:
    result = ex.export(ex.Selection("src"), "dpo", "jsonl", conversational=True)
    assert result.form == "conversational" and not result.notes
    rows = read_jsonl(result.path / "dpo.jsonl")
    prefill = question_prefill(len(SEEDS))
    for row in rows:
        extra = prefill if row["level"] == "question" else ""
        assert render_chat(tokenizer(), row["prompt"], extra) == row["prompt_text"]
        assert row["chosen"] == [{"role": "assistant", "content": extra + row["chosen_text"]}]
        assert row["rejected"] == [{"role": "assistant", "content": extra + row["rejected_text"]}]
        assert row["prompt_id"] == sha256(row["prompt_text"])
    rationale = next(r for r in rows if r["level"] == "rationale")
    assert rationale["prompt"] == plain_messages(
        question_text("Today is 3 May. What was yesterday?", ["2 May", "4 May"])
    )
    assert "Form: trl conversational" in result.card


def test_conversational_falls_back_to_text_when_a_prompt_cannot_be_rebuilt(
    src: dict[str, int], db_path: Path
) -> None:
    with read_session() as s:
        round_id = s.exec(select(Round.id).where(Round.index == 0)).first()
    with write_session() as s:
        s.add(
            Pair(
                round_id=round_id,
                level="question",
                rule="arte",
                prompt="raw",
                chosen="a",
                rejected="b",
            )
        )
    result = ex.export(ex.Selection("src"), "dpo", "jsonl", conversational=True)
    assert result.form == "standard"
    assert "cannot be rebuilt" in result.notes[0] and result.notes[0] in result.card
    assert all(isinstance(r["prompt"], str) for r in read_jsonl(result.path / "dpo.jsonl"))


def test_messages_from_prompt_shapes_and_refusals() -> None:
    tok = tokenizer()
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"}]
    assert ex.messages_from_prompt(tok, render_chat(tok, system)) == system
    user = [{"role": "user", "content": "<ans>x</ans> and {{ braces }}"}]
    assert ex.messages_from_prompt(tok, render_chat(tok, user, "Pre"), "Pre") == user
    assert ex.messages_from_prompt(tok, render_chat(tok, user, "Pre"), "Other") is None
    assert ex.messages_from_prompt(tok, "User: plain text, no template") is None


# --------------------------------------------------------------------- SFT and drafts


def test_sft_export_is_the_tailored_set_as_messages(src: dict[str, int]) -> None:
    result = ex.export(ex.Selection("src"), "sft", "jsonl", name="s")
    rows = read_jsonl(result.path / "sft.jsonl")
    assert len(rows) == 1  # the rejected tailored rationale and the draft phase stay out
    row = rows[0]
    assert row["messages"] == [
        {"role": "user", "content": "Today is 3 May. What was yesterday?\nOptions: 2 May | 4 May"},
        {"role": "assistant", "content": "Yesterday is one day before 3 May. <ans>2 May</ans>"},
    ]
    assert (row["target"], row["answer"], row["strategy"], row["round"]) == (
        "2 May",
        "2 May",
        "plain",
        1,
    )
    assert row["teacher"] == f"{TEACHER}+adapter:{ADAPTER[:16]}"
    assert "dataset_info.json" not in {p for p, _ in result.files}
    manifest = json.loads((result.path / "teachlab_export.json").read_text())
    assert manifest["selection"] == {"study": "src", "round": None}  # pair filters do not apply
    assert "# TeachLab study `src`: SFT tailored set" in result.card
    with pytest.raises(ConfigError, match="conversational"):
        ex.export(ex.Selection("src"), "sft", "jsonl", conversational=True)


def test_drafts_export_has_scores_and_per_probe_results(src: dict[str, int]) -> None:
    result = ex.export(ex.Selection("src", round=0, level="rationale"), "drafts", "parquet")
    import pyarrow.parquet as pq

    rows = {r["draft_id"]: r for r in pq.read_table(result.path / "drafts.parquet").to_pylist()}
    assert {r["kind"] for r in rows.values()} == {"rationale"} and len(rows) == 2
    ra = rows[src["ra"]]
    assert (ra["score"], ra["margin_score"], ra["answer"]) == (1.0, 0.5, None)
    assert [(p["probe_index"], p["correct"], p["gold_logprob"]) for p in ra["probes"]] == [
        (3, True, -0.5),
        (4, False, -1.5),
    ]


# --------------------------------------------------------------------- atomic writes


def test_a_failed_export_leaves_nothing_and_keeps_the_old_one(
    src: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ex.export(ex.Selection("src", round=0), "dpo", "jsonl", name="keep")
    before = first.path.joinpath("dpo.jsonl").read_bytes()

    def boom(**_: Any) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(card_mod, "dataset_card", boom)
    for name, overwrite in (("fresh", False), ("keep", True)):
        with pytest.raises(RuntimeError, match="disk full"):
            ex.export(ex.Selection("src"), "dpo", "jsonl", name=name, overwrite=overwrite)
    root = first.path.parent
    assert sorted(os.listdir(root)) == ["keep"]  # no temp folder, no partial "fresh"
    assert first.path.joinpath("dpo.jsonl").read_bytes() == before
    with pytest.raises(ConflictError, match="exists already"):
        ex.export(ex.Selection("src"), "dpo", "jsonl", name="keep")


def test_overwrite_replaces_an_export_whole(src: dict[str, int]) -> None:
    ex.export(ex.Selection("src"), "dpo", "parquet", name="same")
    result = ex.export(ex.Selection("src", round=1), "dpo", "jsonl", name="same", overwrite=True)
    assert {p for p, _ in result.files} == {
        "dpo.jsonl",
        "README.md",
        "teachlab_export.json",
        "dataset_info.json",
    }
    assert len(read_jsonl(result.path / "dpo.jsonl")) == 1


# --------------------------------------------------------------------- push to the Hub


class FakeApi:
    calls: ClassVar[list[tuple[str, Any, dict[str, Any]]]] = []

    def __init__(self, token: str | None = None) -> None:
        self.calls.append(("init", token, {}))

    def create_repo(self, repo_id: str, **kw: Any) -> None:
        self.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, **kw: Any) -> Any:
        self.calls.append(("upload_folder", kw.pop("repo_id"), kw))
        return type("Info", (), {"commit_url": "https://hf.co/datasets/me/x/commit/1"})()


def test_push_dry_run_is_exactly_the_plan_and_touches_no_network(
    src: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    def no_network(*_: Any, **__: Any) -> None:
        raise AssertionError("a dry run must not build a Hub client")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_network)
    result = ex.export(ex.Selection("src"), "dpo", "jsonl", name="pushme")
    plan = ex.push_to_hub("pushme", "me/teachlab-dpo", private=True, dry_run=True)
    sizes = {p: (result.path / p).stat().st_size for p in os.listdir(result.path)}
    assert plan == ex.PushPlan(
        repo_id="me/teachlab-dpo",
        repo_type="dataset",
        private=True,
        folder=result.path,
        files=tuple(sorted(sizes.items())),
        dry_run=True,
    )
    assert [p for p, _ in plan.files] == [
        "README.md",
        "dataset_info.json",
        "dpo.jsonl",
        "teachlab_export.json",
    ]
    assert plan.total_bytes == sum(sizes.values())
    assert "Would push 4 files" in ex.plan_summary(plan) and "private" in ex.plan_summary(plan)


def test_push_needs_a_token_and_uploads_what_the_plan_lists(
    src: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    ex.export(ex.Selection("src"), "dpo", "jsonl", name="pushme")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ConfigError, match="No Hugging Face token"):
        ex.push_to_hub("pushme", "me/x", dry_run=False)
    with pytest.raises(ConfigError, match="owner"):
        ex.push_to_hub("pushme", "noowner")
    with pytest.raises(NotFoundError):
        ex.push_to_hub("missing", "me/x")
    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    plan = ex.push_to_hub("pushme", "me/x", private=False, dry_run=False)
    assert plan.url == "https://hf.co/datasets/me/x/commit/1" and not plan.dry_run
    init, create, upload = FakeApi.calls
    assert init == ("init", "hf_secret", {})
    assert create == (
        "create_repo",
        "me/x",
        {"repo_type": "dataset", "private": False, "exist_ok": True},
    )
    assert upload[1] == "me/x" and upload[2]["folder_path"] == str(plan.folder)
    assert upload[2]["allow_patterns"] == [p for p, _ in plan.files]


# --------------------------------------------------------------------- import


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "datasets"])
def test_export_then_import_into_a_new_study_gives_the_same_pairs(
    src: dict[str, int], db_path: Path, fmt: str
) -> None:
    result = ex.export(ex.Selection("src"), "dpo", fmt, name="trip")
    new_study("copy")
    imported = ex.import_pairs("copy", result.path, annotator="carol")
    assert (imported.added, imported.skipped, imported.round) == (3, 0, 0)
    with read_session() as s:
        kept = s.exec(select(Pair).where(col(Pair.status) != "rejected")).all()
        original = sorted(
            tuple(getattr(p, f) for f in PAIR_FIELDS)
            for p in kept
            if p.id in {src["p_question"], src["p_rationale"], src["p_edited"]}
        )
        events = s.exec(select(AnnotationEvent)).all()
    assert stored_pairs(db_path, "copy") == original
    assert {(e.annotator, e.action) for e in events} == {("carol", "create")} and len(events) == 3
    again = ex.import_pairs("copy", result.path)
    assert (again.added, again.skipped) == (0, 3)  # idempotent
    assert len(stored_pairs(db_path, "copy")) == 3


def test_conversational_export_imports_back_to_the_exact_texts(
    src: dict[str, int], db_path: Path
) -> None:
    result = ex.export(ex.Selection("src", round=0), "dpo", "jsonl", conversational=True)
    rows = read_jsonl(result.path / "dpo.jsonl")
    # Without the *_text columns the prompt is rendered with the study teacher's template.
    stripped = result.path.parent / "stripped.jsonl"
    with stripped.open("w") as fh:
        for row in rows:
            fh.write(
                json.dumps({k: row[k] for k in ("prompt", "chosen", "rejected", "level")}) + "\n"
            )
    new_study("copy")
    assert ex.import_pairs("copy", stripped).added == 2
    texts = {(p[2], p[3]) for p in stored_pairs(db_path, "copy")}
    rationale = next(r for r in rows if r["level"] == "rationale")
    assert (rationale["prompt_text"], rationale["chosen_text"]) in texts


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_import_schema_mismatch_names_columns_and_the_schema(
    src: dict[str, int], db_path: Path, tmp_path: Path
) -> None:
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"prompt": "p", "chosen": "c", "foo": 1, "chosen_rating": "high", "level": "essay"}],
    )
    with pytest.raises(DataError) as err:
        ex.import_pairs("src", bad)
    msg = str(err.value)
    assert "missing columns: rejected" in msg and "unknown columns: foo" in msg
    assert "row 0 chosen_rating: expected number or null, got 'high'" in msg
    assert "row 0 level: expected null or one of question, rationale" in msg
    assert "Expected columns: prompt (required: text or a list of {role, content} messages)" in msg
    sft = ex.export(ex.Selection("src"), "sft", "jsonl", name="s")
    with pytest.raises(
        DataError, match=r"missing columns: prompt, chosen, rejected.*unknown columns: "
    ):
        ex.import_pairs("src", sft.path / "sft.jsonl")
    dpo = ex.export(ex.Selection("src"), "dpo", "jsonl", name="d")
    with pytest.raises(DataError, match="missing columns: messages"):
        ex.import_sft("src", dpo.path)
    rows = read_jsonl(dpo.path / "dpo.jsonl")
    rows[0]["prompt_text"] += " tampered"
    with pytest.raises(DataError, match="prompt_id is not the sha256"):
        ex.import_pairs("src", write_jsonl(tmp_path / "t.jsonl", rows))
    same = write_jsonl(tmp_path / "same.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "c"}])
    with pytest.raises(DataError, match="different"):
        ex.import_pairs("src", same)
    with pytest.raises(DataError, match="unsupported file type"):
        ex.import_pairs("src", write_jsonl(tmp_path / "x.csv", rows))
    with read_session() as s:
        assert len(s.exec(select(Pair)).all()) == 4  # nothing was written by a failed import


def test_sft_round_trip_through_import(src: dict[str, int], db_path: Path) -> None:
    first = ex.export(ex.Selection("src"), "sft", "datasets", name="s1")
    new_study("copy")
    assert ex.import_sft("copy", first.path).added == 1
    assert ex.import_sft("copy", first.path).skipped == 1  # idempotent
    with read_session() as s:
        drafts = s.exec(select(Draft).where(col(Draft.idem_key).startswith("import:"))).all()
    assert sorted((d.kind, d.phase, d.status) for d in drafts) == [
        ("question", "tailored", "ok"),
        ("rationale", "tailored", "ok"),
    ]
    question = next(d for d in drafts if d.kind == "question")
    assert (question.input, question.choices, question.target) == (
        "Today is 3 May. What was yesterday?",
        ["2 May", "4 May"],
        "2 May",
    )
    second = ex.export(ex.Selection("copy"), "sft", "jsonl", name="s2")
    a = ex.load_records(first.path)[0]
    b = read_jsonl(second.path / "sft.jsonl")[0]
    assert (a["messages"], a["answer"], a["strategy"]) == (
        b["messages"],
        b["answer"],
        b["strategy"],
    )


# --------------------------------------------------------------------- page and CLI


def test_page_download_is_a_zip_outside_storage(src: dict[str, int], storage: Path) -> None:
    import gradio as gr

    from pages import export as page
    from pages.common import AppState
    from teachlab.settings import get_settings

    with gr.Blocks():
        page.build(AppState(settings=get_settings()), gr.State(None))
    archive, card_md, name = page.make_export(
        src["study"], page.ALL_ROUNDS, "dpo", "jsonl", False, ["approved"], "any", "any", None, ""
    )
    assert not Path(archive).resolve().is_relative_to(storage.resolve())
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == [
            "README.md",
            "dataset_info.json",
            "dpo.jsonl",
            "teachlab_export.json",
        ]
        assert len(zf.read("dpo.jsonl").decode().splitlines()) == 1
    assert "**1 rows** exported" in card_md and name in ex.list_exports()
    assert page.round_choices(src["study"]) == [("all rounds", -1), ("round 0", 0), ("round 1", 1)]
    assert "Would push 4 files" in page.push(name, "me/x", True, True)


def test_cli_create_list_push_and_import(src: dict[str, int], db_path: Path) -> None:
    from typer.testing import CliRunner

    from teachlab.cli.export import app as export_app

    runner = CliRunner()
    out = runner.invoke(
        export_app,
        ["create", "--study", "src", "--round", "0", "--status", "approved", "--name", "cli"],
    )
    assert out.exit_code == 0, out.output
    assert "1 dpo rows (standard form)" in out.output and "dpo.jsonl" in out.output
    assert runner.invoke(export_app, ["list"]).output.strip() == "cli"
    out = runner.invoke(export_app, ["push", "cli", "me/x"])
    assert out.exit_code == 0 and "Would push 4 files" in out.output
    new_study("copy")
    path = str(ex.export_dir("cli"))
    out = runner.invoke(export_app, ["import", "--study", "copy", path])
    assert out.exit_code == 0 and "1 dpo rows imported into study 'copy' round 0" in out.output


# --------------------------------------------------------------------- DPOTrainer (slow)


@pytest.mark.slow
@pytest.mark.parametrize("conversational", [False, True])
def test_exported_dpo_file_trains_a_step_in_trl_unchanged(
    src: dict[str, int], tmp_path: Path, conversational: bool
) -> None:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from teachlab.models import fetch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    result = ex.export(ex.Selection("src"), "dpo", "jsonl", conversational=conversational)
    assert result.form == ("conversational" if conversational else "standard")
    data = load_dataset(
        "json",
        data_files=str(result.path / "dpo.jsonl"),
        split="train",
        cache_dir=str(tmp_path / "hf"),
    )
    folder = fetch(TEACHER)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    base = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    fields = DPOConfig.__dataclass_fields__
    checkpointing = next(
        f for f in ("activation_checkpointing", "gradient_checkpointing") if f in fields
    )
    args = DPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=1,
        max_length=256,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,  # trl defaults to True: bf16 autocast on this CPU took 180 s here, fp32 21 s
        disable_tqdm=True,
        **{checkpointing: False},  # trl turns it on by default; a tiny model does not need it
    )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=data, processing_class=tok, peft_config=lora
    )
    assert trainer.train_dataset.num_rows == 3  # no pair dropped for length
    trainer.train()
    assert trainer.state.global_step == 1
    assert any(
        torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h
    )
    layer = trainer.model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.lora_B["default"].weight.abs().sum() > 0  # the adapter learned (B starts at 0)
    assert torch.equal(layer.base_layer.weight, base)  # the base weights did not change
