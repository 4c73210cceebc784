"""`teachlab data …`: task data (BIG-bench, uploads)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

app = typer.Typer(help="Task data (BIG-bench, uploads).", no_args_is_help=True)


@app.command("fetch")
def data_fetch(
    tasks: Annotated[
        list[str] | None,
        typer.Argument(
            help="BIG-bench tasks to fetch (default: the bundled ones).", show_default=False
        ),
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="All of BIG-bench: downloads the 358 MB sdist once.")
    ] = False,
) -> None:
    """Unpack BIG-bench task files into the storage folder (once).

    With no task names it unpacks the tasks the package carries (BIG-Bench Hard and the demo's
    task; no network). Other tasks, or --all, download the bigbench sdist from the package index.

    Example: teachlab data fetch
    Example: teachlab data fetch emoji_movie
    """
    from teachlab.tasks import fetch_bigbench, list_bigbench

    start = time.perf_counter()
    names = [t.removeprefix("bigbench:") for t in tasks or []]
    path = fetch_bigbench(tasks=names or None, everything=everything)
    typer.echo(
        f"BIG-bench: {len(list_bigbench())} tasks in {path} ({time.perf_counter() - start:.1f} s)"
    )


@app.command("list")
def data_list(
    contains: Annotated[str, typer.Option(help="Only names containing this text.")] = "",
) -> None:
    """List the tasks available to studies.

    Example: teachlab data list --contains date
    """
    from teachlab.tasks import list_bigbench

    names = [n for n in list_bigbench() if contains in n]
    if not names:
        typer.echo("(none: run `teachlab data fetch`)" if not contains else "(no match)")
    for name in names:
        typer.echo(f"bigbench:{name}")
