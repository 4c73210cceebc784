"""Dataset rows from the study store: DPO pairs, the tailored SFT set and raw scored drafts.

The row builders are pure (rows in, dicts out); ``load_*`` read a ``Selection`` from the
database. ``messages_from_prompt`` undoes a chat template so a pair can go out conversational.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from teachlab.db import Draft, Pair, ProbeResult, Round, Study, read_session
from teachlab.errors import ConfigError, NotFoundError
from teachlab.pairs import LEVELS
from teachlab.prompts import question_text, render_chat
from teachlab.studies import find_study

KINDS = ("dpo", "sft", "drafts")
PAIR_STATUSES = ("proposed", "approved", "overridden", "edited", "rejected")
SOURCES = ("auto", "human")
DEFAULT_STATUSES = tuple(s for s in PAIR_STATUSES if s != "rejected")
Message = dict[str, str]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Selection:
    """What to export: a study, one round (by index) or all, and the pair filters.

    ``statuses``, ``source`` and ``min_margin`` filter pairs (``None`` statuses: all but
    rejected); ``level`` filters pairs by level and raw drafts by kind.
    """

    study: int | str
    round: int | None = None
    statuses: tuple[str, ...] | None = None
    level: str | None = None
    source: str | None = None
    min_margin: float | None = None

    def __post_init__(self) -> None:
        bad = [s for s in self.statuses or () if s not in PAIR_STATUSES]
        if bad:
            raise ConfigError(f"Unknown pair status {bad}; choose from {', '.join(PAIR_STATUSES)}.")
        if self.level is not None and self.level not in LEVELS:
            raise ConfigError(f"Unknown level {self.level!r}; choose {' or '.join(LEVELS)}.")
        if self.source is not None and self.source not in SOURCES:
            raise ConfigError(f"Unknown source {self.source!r}; choose {' or '.join(SOURCES)}.")

    def describe(self, kind: str = "dpo") -> dict[str, Any]:
        """The selection as recorded in the card and manifest (only the filters that applied)."""
        out = asdict(self)
        out["statuses"] = list(self.statuses or DEFAULT_STATUSES)
        if kind != "dpo":
            for name in ("statuses", "source", "min_margin") + (
                ("level",) if kind == "sft" else ()
            ):
                del out[name]
        return out


@dataclass
class Loaded:
    """The selected study, its rounds (by id) and rows, read in one session."""

    study: Study
    rounds: dict[int, Round]
    pairs: list[Pair]
    drafts: dict[int, Draft]  # drafts the pairs point to, or the selected drafts
    probes: dict[int, list[ProbeResult]]


def _rounds(session: Any, study: Study, index: int | None) -> dict[int, Round]:
    query = select(Round).where(Round.study_id == study.id)
    if index is not None:
        query = query.where(Round.index == index)
    found = {r.id: r for r in session.exec(query.order_by(col(Round.index)))}
    if index is not None and not found:
        raise NotFoundError(f"Study {study.name!r} has no round {index}.")
    return found  # type: ignore[return-value]


def load(sel: Selection, kind: str) -> Loaded:
    """Read what ``kind`` needs for ``sel`` (pairs in curriculum order; drafts by id)."""
    if kind not in KINDS:
        raise ConfigError(f"Unknown export kind {kind!r}; choose one of {', '.join(KINDS)}.")
    with read_session() as session:
        study = find_study(session, sel.study)
        rounds = _rounds(session, study, sel.round)
        ids = list(rounds)
        pairs: list[Pair] = []
        if kind == "dpo":
            chosen = select(Pair).where(
                col(Pair.round_id).in_(ids), col(Pair.status).in_(sel.statuses or DEFAULT_STATUSES)
            )
            if sel.level:
                chosen = chosen.where(Pair.level == sel.level)
            if sel.source:
                chosen = chosen.where(Pair.source == sel.source)
            if sel.min_margin is not None:
                chosen = chosen.where(col(Pair.margin) >= sel.min_margin)
            pairs = list(
                session.exec(chosen.order_by(col(Pair.round_id), col(Pair.rank), col(Pair.id)))
            )
            wanted = {i for p in pairs for i in (p.chosen_draft_id, p.rejected_draft_id) if i}
            query = select(Draft).where(col(Draft.id).in_(wanted))
        elif kind == "sft":
            query = select(Draft).where(col(Draft.round_id).in_(ids), Draft.phase == "tailored")
        else:
            query = select(Draft).where(col(Draft.round_id).in_(ids))
            if sel.level:
                query = query.where(Draft.kind == sel.level)
        drafts = {d.id: d for d in session.exec(query.order_by(col(Draft.id)))}
        probes: dict[int, list[ProbeResult]] = {}
        if kind == "drafts" and drafts:
            results = session.exec(
                select(ProbeResult)
                .where(col(ProbeResult.draft_id).in_(list(drafts)))
                .order_by(
                    col(ProbeResult.draft_id), col(ProbeResult.mode), col(ProbeResult.probe_index)
                )
            )
            for r in results:
                probes.setdefault(r.draft_id, []).append(r)  # type: ignore[arg-type]
    return Loaded(study, rounds, pairs, drafts, probes)  # type: ignore[arg-type]


def model_name(rnd: Round, draft: Draft | None) -> str:
    """The teacher that wrote a text: the round's base model, plus its adapter when it had one."""
    if draft is not None and draft.adapter_hash:
        return f"{rnd.teacher}+adapter:{draft.adapter_hash[:16]}"
    if rnd.teacher_adapter:
        return f"{rnd.teacher}+adapter:{Path(rnd.teacher_adapter).name}"
    return rnd.teacher


def dpo_rows(loaded: Loaded) -> list[dict[str, Any]]:
    """trl's standard (text) form plus provenance; ``*_text`` repeat the byte-exact texts."""
    rows = []
    for p in loaded.pairs:
        rnd = loaded.rounds[p.round_id]
        chosen = loaded.drafts.get(p.chosen_draft_id or -1)
        rejected = loaded.drafts.get(p.rejected_draft_id or -1)
        rows.append(
            {
                "prompt": p.prompt,
                "chosen": p.chosen,
                "rejected": p.rejected,
                "prompt_text": p.prompt,
                "chosen_text": p.chosen,
                "rejected_text": p.rejected,
                "prompt_id": sha256(p.prompt),
                "chosen_rating": p.chosen_score,
                "rejected_rating": p.rejected_score,
                "margin": p.margin,
                "chosen_model": model_name(rnd, chosen),
                "rejected_model": model_name(rnd, rejected),
                "level": p.level,
                "rule": p.rule,
                "source": p.source,
                "status": p.status,
                "annotator": p.annotator,
                "round": rnd.index,
                "rank": p.rank,
                "pair_id": p.id,
            }
        )
    return rows


def pair_prefills(loaded: Loaded) -> dict[int, str]:
    """The prefill each pair's prompt ends with (from its chosen draft; '' when unknown)."""
    out: dict[int, str] = {}
    for p in loaded.pairs:
        draft = loaded.drafts.get(p.chosen_draft_id or -1)
        out[p.id] = draft.prefill if draft is not None else ""  # type: ignore[index]
    return out


_SENTINEL = "\x00TEACHLAB{}\x00"
_SHAPES: tuple[tuple[str, ...], ...] = (("user",), ("system", "user"))


def messages_from_prompt(tokenizer: Any, prompt: str, prefill: str = "") -> list[Message] | None:
    """The messages whose chat-templated text (plus ``prefill``) is exactly ``prompt``, or None.

    The template is rendered once with sentinel contents; what surrounds the sentinels must
    match ``prompt`` literally, and the result is re-rendered and compared byte for byte, so a
    template that rewrites its content (strips, escapes) gives None rather than a wrong answer.
    """
    if prefill and not prompt.endswith(prefill):
        return None
    body = prompt[: len(prompt) - len(prefill)]
    for roles in _SHAPES:
        marks = [_SENTINEL.format(i) for i in range(len(roles))]
        try:
            skeleton = render_chat(
                tokenizer, [{"role": r, "content": m} for r, m in zip(roles, marks, strict=True)]
            )
        except Exception:  # a template that refuses this shape: try the next one
            continue
        if not all(skeleton.count(m) == 1 for m in marks):
            continue
        pieces = re.split("|".join(re.escape(m) for m in marks), skeleton)
        pattern = "(.*?)".join(re.escape(piece) for piece in pieces)
        match = re.fullmatch(pattern, body, flags=re.DOTALL)
        if match is None:
            continue
        messages = [{"role": r, "content": c} for r, c in zip(roles, match.groups(), strict=True)]
        if render_chat(tokenizer, messages, prefill) == prompt:
            return messages
    return None


def conversational(
    rows: Sequence[Mapping[str, Any]],
    tokenizers: Mapping[int, Any],
    prefills: Mapping[int, str],
) -> tuple[list[dict[str, Any]] | None, str]:
    """trl's conversational form of ``rows`` (tokenizer by round index), or (None, why not).

    All or nothing: one dataset cannot mix forms. A prefill goes at the start of the assistant
    turn, where the teacher's generation continued it.
    """
    out = []
    for row in rows:
        prefill = prefills.get(row["pair_id"], "")
        messages = messages_from_prompt(tokenizers[row["round"]], row["prompt_text"], prefill)
        if messages is None:
            return None, (
                f"pair {row['pair_id']}'s prompt is not its teacher's chat template applied to "
                "plain messages, so it cannot be rebuilt as a conversation"
            )
        out.append(
            {
                **row,
                "prompt": messages,
                "chosen": [{"role": "assistant", "content": prefill + row["chosen_text"]}],
                "rejected": [{"role": "assistant", "content": prefill + row["rejected_text"]}],
            }
        )
    return out, ""


def sft_messages(question: Draft, rationale: Draft) -> list[Message]:
    return [
        {"role": "user", "content": question_text(question.input or "", question.choices)},
        {"role": "assistant", "content": rationale.rationale or rationale.raw_output},
    ]


def sft_rows(loaded: Loaded) -> list[dict[str, Any]]:
    """The tailored set: ok rationales of a tailored question, as user/assistant messages."""
    rows = []
    for d in loaded.drafts.values():
        if d.kind != "rationale" or d.status != "ok":
            continue
        question = loaded.drafts.get(d.parent_id or -1)
        if question is None or not question.input:
            continue
        messages = sft_messages(question, d)
        rows.append(
            {
                "messages": messages,
                "prompt_id": sha256(messages[0]["content"]),
                "target": question.target,
                "answer": d.answer,
                "strategy": d.strategy,
                "teacher": model_name(loaded.rounds[d.round_id], d),
                "round": loaded.rounds[d.round_id].index,
                "question_id": question.id,
                "draft_id": d.id,
            }
        )
    return rows


def _probe(r: ProbeResult) -> dict[str, Any]:
    return {
        "probe_index": r.probe_index,
        "mode": r.mode,
        "predicted": r.predicted,
        "correct": r.correct,
        "gold_logprob": r.gold_logprob,
        "margin": r.margin,
        "output": r.output,
    }


def draft_rows(loaded: Loaded) -> list[dict[str, Any]]:
    """Every selected draft with its texts, scores and per-probe results."""
    return [
        {
            "draft_id": d.id,
            "round": loaded.rounds[d.round_id].index,
            "kind": d.kind,
            "phase": d.phase,
            "parent_id": d.parent_id,
            "strategy": d.strategy,
            "prompt": d.prompt,
            "prefill": d.prefill,
            "raw_output": d.raw_output,
            "input": d.input,
            "target": d.target,
            "choices": list(d.choices),
            "rationale": d.rationale,
            "answer": d.answer,
            "status": d.status,
            "reason": d.reason,
            "flags": list(d.flags),
            "template_version": d.template_version,
            "teacher": model_name(loaded.rounds[d.round_id], d),
            "score": d.score,
            "margin_score": d.margin_score,
            "probes": [_probe(r) for r in loaded.probes.get(d.id, [])],  # type: ignore[arg-type]
            "created_at": d.created_at.isoformat(),
        }
        for d in loaded.drafts.values()
    ]


def features(kind: str, form: str = "standard") -> Any:
    """The ``datasets.Features`` of an export (fixed, so empty or all-null columns keep types)."""
    from datasets import Features, List, Value

    text, num, integer = Value("string"), Value("float64"), Value("int64")
    if kind == "sft":
        return Features(
            {
                "messages": List({"role": text, "content": text}),
                "prompt_id": text,
                "target": text,
                "answer": text,
                "strategy": text,
                "teacher": text,
                "round": integer,
                "question_id": integer,
                "draft_id": integer,
            }
        )
    if kind == "drafts":
        probe = {
            "probe_index": integer,
            "mode": text,
            "predicted": text,
            "correct": Value("bool"),
            "gold_logprob": num,
            "margin": num,
            "output": text,
        }
        names = "kind phase strategy prompt prefill raw_output input target rationale answer"
        names += " status reason template_version teacher"
        types: dict[str, Any] = {n: text for n in names.split()}
        types |= {n: integer for n in ("draft_id", "round", "parent_id")}
        types |= {"choices": List(text), "flags": List(text), "score": num, "margin_score": num}
        return Features({**types, "probes": List(probe), "created_at": text})
    turn = List({"role": text, "content": text}) if form == "conversational" else text
    return Features(
        {
            "prompt": turn,
            "chosen": turn,
            "rejected": turn,
            **{n: text for n in ("prompt_text", "chosen_text", "rejected_text", "prompt_id")},
            **{n: num for n in ("chosen_rating", "rejected_rating", "margin")},
            **{n: text for n in ("chosen_model", "rejected_model", "level", "rule", "source")},
            "status": text,
            "annotator": text,
            "round": integer,
            "rank": integer,
            "pair_id": integer,
        }
    )


def counts(rows: Iterable[Mapping[str, Any]], *keys: str) -> dict[str, dict[str, int]]:
    """Per key, how many rows carry each value (for the dataset card)."""
    out: dict[str, dict[str, int]] = {k: {} for k in keys}
    for row in rows:
        for k in keys:
            value = str(row.get(k))
            out[k][value] = out[k].get(value, 0) + 1
    return {k: dict(sorted(v.items())) for k, v in out.items()}
