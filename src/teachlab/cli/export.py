"""`teachlab export …`: export a study's pairs, tailored set or drafts, push them, import them.

Errors are TeachlabErrors, printed on one line by ``teachlab.cli.main``.
"""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    help="Export DPO pairs, SFT data or drafts (JSONL, Parquet, datasets); push; import.",
    no_args_is_help=True,
)


@app.command("create")
def export_create(
    study: Annotated[str, typer.Option(help="Study id or name.")],
    kind: Annotated[str, typer.Option(help="dpo, sft or drafts.")] = "dpo",
    fmt: Annotated[str, typer.Option("--format", help="jsonl, parquet or datasets.")] = "jsonl",
    round_index: Annotated[
        int | None, typer.Option("--round", help="Round index (default: every round).")
    ] = None,
    status: Annotated[
        list[str] | None,
        typer.Option(help="Pair status to include (repeatable; default: all but rejected)."),
    ] = None,
    level: Annotated[str | None, typer.Option(help="question or rationale.")] = None,
    source: Annotated[str | None, typer.Option(help="auto or human.")] = None,
    min_margin: Annotated[float | None, typer.Option(help="Smallest score margin.")] = None,
    conversational: Annotated[
        bool, typer.Option(help="DPO as trl's message lists (default: exact text form).")
    ] = False,
    name: Annotated[str | None, typer.Option(help="Export folder name (sanitised).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an export of the same name.")] = False,
) -> None:
    """Export a study (or one round, or a filtered selection) into the exports folder.

    Example: teachlab export create --study demo --kind dpo --format parquet --status approved
    """
    from teachlab.export import Selection, export

    selection = Selection(
        study=study,
        round=round_index,
        statuses=tuple(status) if status else None,
        level=level,
        source=source,
        min_margin=min_margin,
    )
    result = export(
        selection,
        kind,
        fmt,
        name=name,
        conversational=conversational,
        overwrite=overwrite,
    )
    typer.echo(f"{result.rows} {kind} rows ({result.form} form) -> {result.path}")
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    for path, size in result.files:
        typer.echo(f"  {path} ({size} bytes)")


@app.command("list")
def export_list() -> None:
    """List the exports, newest first.

    Example: teachlab export list
    """
    from teachlab.export import list_exports

    names = list_exports()
    typer.echo("\n".join(names) if names else "(none)")


@app.command("push")
def export_push(
    name: Annotated[str, typer.Argument(help="Export name (see `teachlab export list`).")],
    repo_id: Annotated[str, typer.Argument(help="Hub dataset repository, owner/name.")],
    private: Annotated[bool, typer.Option(help="Create the repository private.")] = True,
    dry_run: Annotated[bool, typer.Option(help="Only show what would be uploaded.")] = True,
) -> None:
    """Push an export to the Hugging Face Hub (token from HF_TOKEN or `hf auth login`).

    Example: teachlab export push demo-r0-dpo-jsonl-20250101-120000 me/demo-dpo --no-dry-run
    """
    from teachlab.export import plan_summary, push_to_hub

    typer.echo(plan_summary(push_to_hub(name, repo_id, private=private, dry_run=dry_run)))


@app.command("import")
def export_import(
    study: Annotated[str, typer.Option(help="Study id or name to import into.")],
    path: Annotated[str, typer.Argument(help="JSONL/Parquet file, datasets or export folder.")],
    kind: Annotated[str, typer.Option(help="dpo (pairs) or sft (tailored set).")] = "dpo",
    annotator: Annotated[str, typer.Option(help="Name recorded in the audit trail.")] = "import",
) -> None:
    """Import DPO pairs or SFT examples into the study's current round (idempotent).

    Example: teachlab export import --study demo-2 storage/exports/demo-r0-dpo-jsonl-…/dpo.jsonl
    """
    from teachlab.errors import ConfigError
    from teachlab.export import import_pairs, import_sft

    if kind == "dpo":
        result = import_pairs(study, path, annotator=annotator)
    elif kind == "sft":
        result = import_sft(study, path)
    else:
        raise ConfigError(f"Unknown import kind {kind!r}; choose dpo or sft.")
    typer.echo(
        f"{result.added} {kind} rows imported into study {result.study!r} round {result.round}"
        f" ({result.skipped} already there)"
    )
