"""`teachlab data …`: task data (BIG-bench, uploads)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

app = typer.Typer(help="Task data (BIG-bench, uploads).", no_args_is_help=True)


@app.command("fetch")
def data_fetch() -> None:
    """Download the BIG-bench task files (once) into the storage folder.

    Example: teachlab data fetch
    """
    from teachlab.tasks import fetch_bigbench, list_bigbench

    start = time.perf_counter()
    path = fetch_bigbench()
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
