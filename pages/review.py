"""Review page: the pair queue, least certain first; approve, swap, edit or reject, undo, bulk.

The page keeps the version of the pair it shows and hands it back with the decision, so a
decision made on a stale view is refused (someone else decided first) instead of overwriting.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import gradio as gr

from pages.common import (
    AppState,
    current_user,
    esc,
    md,
    pre,
    shown_js,
    skips,
    ui_errors,
    when_round_chosen,
)
from teachlab import review, rounds, studies, views
from teachlab.errors import ConfigError

QUEUE_ROWS = 200
STATUS_CHOICES = [
    ("to review (proposed)", "proposed"),
    ("all", views.ALL),
    ("approved", "approved"),
    ("swapped", "overridden"),
    ("edited", "edited"),
    ("rejected", "rejected"),
]
LEVEL_CHOICES = [("all", views.ALL), ("question", "question"), ("rationale", "rationale")]
ORDER_CHOICES = [
    ("least certain first (|margin|)", "margin"),
    ("curriculum rank", "rank"),
    ("oldest first", "id"),
]
SHORTCUTS = {
    "a": "review-approve",
    "s": "review-swap",
    "r": "review-reject",
    "u": "review-undo",
    "j": "review-next",
    "k": "review-prev",
}
LEGEND = (
    "<div class='tl-keys'>Keys: <kbd>a</kbd> approve · <kbd>s</kbd> swap · <kbd>r</kbd> "
    "reject · <kbd>e</kbd> edit the texts · <kbd>u</kbd> undo · <kbd>j</kbd>/<kbd>k</kbd> "
    "next/previous (ignored while you type in a box)</div>"
)
# Clicks the page's own buttons; installed once per browser tab, acts only while the Review
# page is on screen and never while the focus is in a text field.
KEYS_JS = """
if (!window.__teachlabReviewKeys) {
  window.__teachlabReviewKeys = true;
  const ids = __IDS__;
  document.addEventListener('keydown', (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.repeat || !ev.key) return;
    const t = ev.target;
    if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
    const key = ev.key.toLowerCase();
    const page = document.getElementById('review-page');
    if (!page || page.offsetParent === null) return;
    if (key === 'e') {
      const box = document.querySelector('#review-edit-chosen textarea');
      if (box) { ev.preventDefault(); box.scrollIntoView({block: 'center'}); box.focus(); }
      return;
    }
    const el = ids[key] && document.getElementById(ids[key]);
    const btn = el && (el.tagName === 'BUTTON' ? el : el.querySelector('button'));
    if (btn && !btn.disabled) { ev.preventDefault(); btn.click(); }
  });
}
""".replace("__IDS__", json.dumps(SHORTCUTS))


def _opt(value: str | None) -> str | None:
    return None if not value or value == views.ALL else value


def _bound(value: str | float | None, label: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(
            f"'{label}' must be a number such as 0.1 or -0.25, not {str(value)!r}; clear the box "
            "for no bound."
        ) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ConfigError(f"'{label}' must be a finite number; clear the box for no bound.")
    return number


def margin_bounds(
    low: str | float | None, high: str | float | None
) -> tuple[float | None, float | None]:
    """The bulk filter's bounds from its two boxes (empty: no bound), checked to meet."""
    lo, hi = _bound(low, "margin ≥"), _bound(high, "margin ≤")
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(
            f"margin ≥ {lo:g} and margin ≤ {hi:g} match no pair; raise the ≤ bound above "
            f"{lo:g}, or clear it for no upper bound."
        )
    return lo, hi


def progress_html(done: int, total: int, mine: tuple[str, int] | None = None) -> str:
    pct = round(100 * done / total) if total else 0
    yours = f" · {esc(mine[0])} decided {mine[1]}" if mine else ""
    return (
        f"<div class='tl-progress'><b>Reviewed {done} / {total}</b> ({pct}%){yours}"
        f"<div role='progressbar' aria-valuenow='{pct}' style='background:#e8e8e8;"
        f"border-radius:4px;height:10px;margin-top:4px'><div style='width:{pct}%;"
        "background:#54a24b;height:10px;border-radius:4px'></div></div></div>"
    )


SCORE_NAMES = {"accuracy": "probe accuracy", "margin": "log-prob margin"}


def _side(
    title: str,
    colour: str,
    text: str,
    score: float | None,
    student: views.StudentView | None,
    metric: str = "accuracy",
) -> str:
    name = SCORE_NAMES.get(metric, metric)
    head = f"<b>{title}</b>" + (f" · {esc(name)} {score:.3f}" if score is not None else "")
    lines = [head, pre(text)]
    if student is not None:
        n = len(student.predictions)
        right = sum(c for _, _, c in student.predictions)
        if n:
            lines.append(
                f"<div>student with it as demonstration: {right}/{n} "
                f"<span style='letter-spacing:1px'>{esc(student.marks)}</span></div>"
            )
        if student.rationale_scores:
            shown = ", ".join(f"{s:.2f}" for s in student.rationale_scores)
            lines.append(f"<div>its rationales scored {esc(shown)}</div>")
        if student.answer:
            lines.append(f"<div>answer: <code>{esc(student.answer)}</code></div>")
    return (
        f"<div style='border:2px solid {colour};border-radius:6px;padding:8px;"
        f"min-width:0'>{''.join(lines)}</div>"
    )


def pair_html(detail: views.PairDetail, events: list[Any]) -> str:
    p = detail.pair
    base = (
        f" · zero-shot probe accuracy {detail.baseline:.3f}" if detail.baseline is not None else ""
    )
    last = (
        f" · last decided by {esc(p.annotator)}" + (f" ({esc(p.note)})" if p.note else "")
        if p.annotator
        else ""
    )
    name = SCORE_NAMES.get(detail.metric, detail.metric)
    parts = [
        f"<div>Pair <b>#{p.id}</b> · {esc(p.level)} level · rule {esc(p.rule)} · "
        f"{esc(name)} gap (chosen − rejected) <b>{p.margin:+.3f}</b> · status "
        f"<b>{esc(p.status)}</b> · {esc(p.source)} · version {p.version}{base}{last}</div>",
    ]
    if detail.question:
        parts.append(
            "<div class='tl-question'><b>Question both rationales answer</b>"
            f"{pre(detail.question)}</div>"
        )
    parts += [
        "<div style='display:grid;grid-template-columns:1fr 1fr;gap:12px;margin:8px 0'>",
        _side("Chosen", "#54a24b", p.chosen, p.chosen_score, detail.chosen, detail.metric),
        _side("Rejected", "#e45756", p.rejected, p.rejected_score, detail.rejected, detail.metric),
        "</div>",
        f"<details><summary>Prompt the teacher is trained on</summary>{pre(p.prompt)}</details>",
    ]
    if events:
        items = "".join(
            f"<li>{esc(views.aware(e.created_at).strftime('%Y-%m-%d %H:%M'))} {esc(e.annotator)}: "
            f"{esc(e.action)}{' — ' + esc(e.note) if e.note else ''}</li>"
            for e in events[-5:]
        )
        parts.append(
            f"<details><summary>History ({len(events)})</summary><ul>{items}</ul></details>"
        )
    return "<div class='tl-pair'>" + "".join(parts) + "</div>"


def build(state: AppState, current_study: gr.State, tab: gr.Tab) -> None:
    with gr.Column(elem_id="review-page"):
        gr.Markdown(
            "## Review\nThe student's preferences as pairs: the **chosen** draft helped it more "
            "than the **rejected** one. Approve, swap (the student was wrong), edit the texts, or "
            "reject the pair; the least certain pairs (small margins) come first. Your decisions "
            "always win over the automatic ones when the teacher is aligned."
        )
        gr.HTML(LEGEND, js_on_load=KEYS_JS, elem_id="review-keys")
        with gr.Accordion("Guidelines", open=False):
            guidelines = gr.Markdown(elem_id="review-guidelines")
            with gr.Column(visible=False) as guide_edit:
                guide_box = gr.Textbox(label="Edit the guidelines (admins)", lines=4)
                guide_save = gr.Button("Save guidelines", elem_id="review-guidelines-save")
        with gr.Row():
            # Choices are filled per study at run time; API callers may name any round id directly.
            rnd = gr.Dropdown([], label="Round", allow_custom_value=True, elem_id="review-round")
            status = gr.Dropdown(
                STATUS_CHOICES, value="proposed", label="Show", elem_id="review-status"
            )
            level = gr.Dropdown(
                LEVEL_CHOICES, value=views.ALL, label="Level", elem_id="review-level"
            )
            order = gr.Dropdown(
                ORDER_CHOICES, value="margin", label="Order", elem_id="review-order"
            )
        progress = gr.HTML(progress_html(0, 0), elem_id="review-progress")
        pair = gr.HTML("<p>Select a study on the Studies page first.</p>", elem_id="review-pair")
        note = gr.Textbox(
            label="Note (optional, kept in the audit trail)", lines=1, elem_id="review-note"
        )
        with gr.Row():
            approve = gr.Button("Approve (a)", variant="primary", elem_id="review-approve")
            swap = gr.Button("Swap (s)", elem_id="review-swap")
            reject = gr.Button("Reject (r)", variant="stop", elem_id="review-reject")
            undo = gr.Button("Undo (u)", elem_id="review-undo")
            prev = gr.Button("← Previous (k)", elem_id="review-prev")
            nxt = gr.Button("Next (j) →", elem_id="review-next")
        message = gr.Markdown(elem_id="review-message")
        with gr.Row():
            chosen_box = gr.Textbox(
                label="Edit chosen (e)", lines=3, max_lines=12, elem_id="review-edit-chosen"
            )
            rejected_box = gr.Textbox(
                label="Edit rejected", lines=3, max_lines=12, elem_id="review-edit-rejected"
            )
        edit = gr.Button("Save edit", elem_id="review-edit")
        queue_table = gr.Dataframe(
            views.queue_frame([]),
            interactive=False,
            wrap=True,
            max_height=320,
            label="Queue (select a row to open it)",
            elem_id="review-queue",
        )
        with gr.Row():
            pair_no = gr.Number(label="Pair id", precision=0, elem_id="review-pair-id")
            open_btn = gr.Button("Open", scale=0, elem_id="review-open")
        with gr.Accordion(
            "Bulk decisions by margin (admins; unreviewed pairs only)", open=False
        ) as bulk_box:
            with gr.Row():
                # Text, not number boxes: an empty box is "no bound" (a number box sends 0).
                min_margin = gr.Textbox(
                    label="margin ≥", placeholder="no lower bound", elem_id="review-bulk-min"
                )
                max_margin = gr.Textbox(
                    label="margin ≤", placeholder="no upper bound", elem_id="review-bulk-max"
                )
                bulk_level = gr.Dropdown(LEVEL_CHOICES, value=views.ALL, label="Level")
            bulk_match = gr.Markdown(elem_id="review-bulk-match")
            with gr.Row():
                bulk_ok = gr.Button("Approve all matching", elem_id="review-bulk-approve")
                bulk_no = gr.Button(
                    "Reject all matching", variant="stop", elem_id="review-bulk-reject"
                )
        state.for_admins(bulk_box)
        pair_id = gr.State(None)
        painted = gr.State(None)  # the round whose queue the page shows
        on_screen = gr.Checkbox(value=True, visible=False, label="on screen")
        version = gr.State(None)
        last = gr.State(None)  # (pair id, version) of this tab's latest decision, for undo

    view_outputs = [queue_table, progress, pair, chosen_box, rejected_box, pair_id, version]
    filters = [rnd, status, level, order]

    def view(
        round_id: int | None, st: str, lv: str, od: str, pid: int | None = None
    ) -> tuple[Any, ...]:
        if not round_id:
            return (
                views.queue_frame([]),
                progress_html(0, 0),
                "<p>Select a study on the Studies page first.</p>",
                "",
                "",
                None,
                None,
            )
        rid = views.as_id(round_id)
        pairs = review.queue(rid, status=_opt(st), level=_opt(lv), order=od or "margin")
        done, total = review.progress(rid)
        user = current_user(state)
        mine = (user, review.decided_by(rid, user)) if user and state.auth_enabled else None
        if pid is None and pairs:
            pid = pairs[0].id
        if pid is None:
            empty = (
                "No pairs in this round yet — build them with the <b>pairs</b> stage on the Runs "
                "page."
                if not total
                else f"Nothing left to review with this filter ({done}/{total} reviewed)."
            )
            return (
                views.queue_frame(pairs[:QUEUE_ROWS]),
                progress_html(done, total, mine),
                f"<p>{empty}</p>",
                "",
                "",
                None,
                None,
            )
        detail = views.pair_detail(int(pid))
        if detail.pair.round_id != rid:
            raise ConfigError(f"Pair {pid} is not in the selected round; pick its round first.")
        p = detail.pair
        return (
            views.queue_frame(pairs[:QUEUE_ROWS]),
            progress_html(done, total, mine),
            pair_html(detail, review.history(p.id)),  # type: ignore[arg-type]
            p.chosen,
            p.rejected,
            p.id,
            p.version,
        )

    def neighbour(
        round_id: int, st: str, lv: str, od: str, pid: int | None, step: int
    ) -> int | None:
        ids = [p.id for p in review.queue(round_id, status=_opt(st), level=_opt(lv), order=od)]
        if not ids:
            return None
        if pid not in ids:
            return ids[0]
        return ids[max(0, min(len(ids) - 1, ids.index(pid) + step))]

    @ui_errors
    def on_study(
        request: gr.Request,
        study_id: int | None,
        st: str,
        lv: str,
        od: str,
        shown: bool = True,
    ) -> tuple[Any, ...]:
        """The study's current round and guidelines; its queue only when the page is on screen
        (opening the page reads it otherwise)."""
        if not study_id:
            return (
                gr.Dropdown(choices=[], value=None),
                "",
                "",
                gr.Column(visible=False),
                *view(None, st, lv, od),
                None,
                "",
                None,
            )
        study = studies.get_study(int(study_id))
        current = rounds.current_round(int(study_id)).id
        is_admin = state.role(request) == "admin"
        loading = (  # no pair of the previous study stays behind the new study's name
            views.queue_frame([]),
            progress_html(0, 0),
            "<p>Loading this study's pairs…</p>",
            "",
            "",
            None,
            None,
            None,
            "",
            None,
        )
        queue = (*view(current, st, lv, od), None, "", current) if shown else loading
        return (
            gr.Dropdown(choices=views.round_options(int(study_id)), value=current),
            study.guidelines or "_No guidelines yet._",
            study.guidelines,
            gr.Column(visible=is_admin),
            *queue,
        )

    @ui_errors
    def refresh(round_id: int | None, st: str, lv: str, od: str) -> tuple[Any, ...]:
        return view(round_id, st, lv, od)

    @ui_errors
    def catch_up(study_id: int | None, *rest: Any) -> tuple[Any, ...]:
        """The picker changed: show its round's queue, if on screen and not shown already."""
        round_id, st, lv, od, shown_round, shown = rest
        rid = views.as_id(round_id) if round_id else None
        if not shown or rid is None or rid == shown_round or not study_id:
            return skips(len(view_outputs) + 1)
        if views.study_of_round(rid).id != int(study_id):
            return skips(len(view_outputs) + 1)
        return (*view(rid, st, lv, od), rid)

    def refresh_painted(_study: Any, round_id: Any, *f: str) -> tuple[Any, ...]:
        shown = refresh(round_id, *f)
        if not isinstance(shown, tuple):
            return skips(len(view_outputs) + 1)
        return (*shown, views.as_id(round_id) if round_id else None)

    @ui_errors
    def open_pair(
        round_id: int | None, st: str, lv: str, od: str, pid: float | None
    ) -> tuple[Any, ...]:
        if not pid:
            raise gr.Error("Enter a pair id, or select a row in the queue.")
        return view(round_id, st, lv, od, int(pid))

    @ui_errors
    def select(
        round_id: int | None, st: str, lv: str, od: str, evt: gr.SelectData
    ) -> tuple[Any, ...]:
        row = evt.row_value or []
        if not row or row[0] in (None, ""):
            return tuple(gr.skip() for _ in view_outputs)
        return view(round_id, st, lv, od, int(row[0]))

    @ui_errors
    def move(
        step: int, round_id: int | None, st: str, lv: str, od: str, pid: int | None
    ) -> tuple[Any, ...]:
        if not round_id:
            raise gr.Error("Select a study on the Studies page first.")
        return view(round_id, st, lv, od, neighbour(views.as_id(round_id), st, lv, od, pid, step))

    def decision(action: str) -> Callable[..., tuple[Any, ...]]:
        @ui_errors
        def handler(
            request: gr.Request,
            round_id: int | None,
            st: str,
            lv: str,
            od: str,
            pid: int | None,
            ver: int | None,
            text: str,
            *edited: str,
        ) -> tuple[Any, ...]:
            state.role(request)  # any logged-in user may review
            who = state.user(request)
            if not round_id or pid is None or ver is None:
                raise gr.Error("Open a pair first.")
            rid = views.as_id(round_id)
            before = [p.id for p in review.queue(rid, status=_opt(st), level=_opt(lv), order=od)]
            kw = {"chosen": edited[0], "rejected": edited[1]} if action == "edit" else {}
            done = review.decide(int(pid), action, who, int(ver), note=text or "", **kw)
            after = [p.id for p in review.queue(rid, status=_opt(st), level=_opt(lv), order=od)]
            # Move on to the pair that followed this one; at the end, wrap to the first left.
            later = before[before.index(pid) + 1 :] if pid in before else []
            nxt_id = next((i for i in later if i in after), None)
            if nxt_id is None:
                nxt_id = next((i for i in after if i != pid), None)
            out = view(rid, st, lv, od, nxt_id)
            msg = f"Pair #{done.id}: **{done.status}** (version {done.version}). Undo with **u**."
            return (*out, (done.id, done.version), "", msg)

        return handler

    @ui_errors
    def do_undo(
        request: gr.Request,
        round_id: int | None,
        st: str,
        lv: str,
        od: str,
        pid: int | None,
        ver: int | None,
        latest: Any,
    ) -> tuple[Any, ...]:
        state.role(request)
        who = state.user(request)
        target, expected = latest or (pid, ver)
        if target is None or expected is None:
            raise gr.Error("Nothing to undo: open a pair first.")
        undone = review.undo(int(target), who, int(expected))
        msg = f"Undid the last decision on pair #{undone.id}; it is **{undone.status}** again."
        return (*view(round_id, st, lv, od, undone.id), None, "", msg)

    @ui_errors
    def do_bulk(
        action: str,
        request: gr.Request,
        round_id: int | None,
        st: str,
        lv: str,
        od: str,
        pid: int | None,
        low: str | float | None,
        high: str | float | None,
        blevel: str,
    ) -> tuple[Any, ...]:
        who = state.require_admin(request)
        if not round_id:
            raise gr.Error("Select a study on the Studies page first.")
        low, high = margin_bounds(low, high)
        if low is None and high is None:
            raise ConfigError(
                "Give a margin bound (≥ and/or ≤) for a bulk decision, so it never "
                "decides a whole round by accident."
            )
        n = review.bulk(
            views.as_id(round_id),
            action,
            who,
            min_margin=low,
            max_margin=high,
            level=_opt(blevel),
            note=f"bulk {action} by margin filter",
        )
        past = "approved" if action == "approve" else "rejected"
        return (*view(round_id, st, lv, od, pid), f"Bulk: **{n}** unreviewed pairs {past}.")

    @ui_errors
    def save_guidelines(request: gr.Request, study_id: int | None, text: str) -> str:
        state.require_admin(request)
        if not study_id:
            raise gr.Error("Select a study on the Studies page first.")
        studies.update_guidelines(int(study_id), text or "")
        return text or "_No guidelines yet._"

    current_study.change(
        on_study,
        [current_study, status, level, order, on_screen],
        [rnd, guidelines, guide_box, guide_edit, *view_outputs, last, message, painted],
        api_name="review_study",
        show_progress="hidden",
        js=shown_js("review-page"),
    )
    rnd.change(
        catch_up,
        [current_study, *filters, painted, on_screen],
        [*view_outputs, painted],
        api_visibility="private",
        show_progress="hidden",
        js=shown_js("review-page"),
    )
    gr.on(
        [w.input for w in filters[1:]],  # the round picker: catch_up, on any change
        refresh,
        filters,
        view_outputs,
        api_name="review_queue",
    )
    tab.select(
        when_round_chosen(refresh_painted, len(view_outputs) + 1),
        [current_study, *filters],
        [*view_outputs, painted],
        api_name="review_tab",
        show_progress="hidden",
    )
    open_btn.click(open_pair, [*filters, pair_no], view_outputs, api_name="review_open")
    queue_table.select(select, filters, view_outputs, api_name="review_select")

    def next_pair(round_id: Any, st: str, lv: str, od: str, pid: int | None) -> tuple[Any, ...]:
        return move(1, round_id, st, lv, od, pid)

    def previous_pair(round_id: Any, st: str, lv: str, od: str, pid: int | None) -> tuple[Any, ...]:
        return move(-1, round_id, st, lv, od, pid)

    nxt.click(next_pair, [*filters, pair_id], view_outputs, api_name="review_next")
    prev.click(previous_pair, [*filters, pair_id], view_outputs, api_name="review_prev")
    decided = [*view_outputs, last, note, message]
    common = [*filters, pair_id, version, note]
    approve.click(decision("approve"), common, decided, api_name="review_approve")
    swap.click(decision("swap"), common, decided, api_name="review_swap")
    reject.click(decision("reject"), common, decided, api_name="review_reject")
    edit.click(
        decision("edit"), [*common, chosen_box, rejected_box], decided, api_name="review_edit"
    )
    undo.click(do_undo, [*filters, pair_id, version, last], decided, api_name="review_undo")
    bulk_in = [*filters, pair_id, min_margin, max_margin, bulk_level]

    def bulk_approve(request: gr.Request, *args: Any) -> tuple[Any, ...]:
        return do_bulk("approve", request, *args)

    def bulk_reject(request: gr.Request, *args: Any) -> tuple[Any, ...]:
        return do_bulk("reject", request, *args)

    def preview(round_id: Any, low: str | None, high: str | None, blevel: str) -> str:
        if not round_id:
            return ""
        try:
            lo, hi = margin_bounds(low, high)
        except ConfigError as exc:
            return f"⚠ {md(str(exc))}"
        if lo is None and hi is None:
            return "Give a bound (≥ and/or ≤) to choose pairs."
        n = review.count_matching(
            views.as_id(round_id), min_margin=lo, max_margin=hi, level=_opt(blevel)
        )
        return f"**{n}** unreviewed pairs match."

    gr.on(
        [min_margin.change, max_margin.change, bulk_level.change, rnd.change],
        preview,
        [rnd, min_margin, max_margin, bulk_level],
        [bulk_match],
        api_visibility="private",
        show_progress="hidden",
    )
    bulk_ok.click(bulk_approve, bulk_in, [*view_outputs, message], api_name="review_bulk_approve")
    bulk_no.click(bulk_reject, bulk_in, [*view_outputs, message], api_name="review_bulk_reject")
    guide_save.click(
        save_guidelines, [current_study, guide_box], [guidelines], api_name="save_guidelines"
    )
