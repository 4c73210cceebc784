"""`teachlab models …`: the bundled and cached models."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from teachlab.cli.common import table

app = typer.Typer(help="Bundled and cached models.", no_args_is_help=True)


@app.command("fetch")
def models_fetch(
    refs: Annotated[
        list[str] | None, typer.Argument(help="Model references (default: bundled).")
    ] = None,
) -> None:
    """De-quantise bundled models once and cache them (fast loads afterwards).

    Example: teachlab models fetch bundled:smollm2-135m-instruct
    """
    from teachlab import models

    for ref in refs or [models.BUNDLED_PREFIX + n for n in models.BUNDLED]:
        start = time.perf_counter()
        cached = models.parse_ref(ref).kind == "bundled" and models.is_cached(models.parse_ref(ref))
        path = models.fetch(ref)
        note = "cached" if cached else f"ready in {time.perf_counter() - start:.1f} s"
        typer.echo(f"{ref}: {note} ({path})")


@app.command("list")
def models_list() -> None:
    """List bundled models and whether they are installed and cached.

    Example: teachlab models list
    """
    from teachlab import models

    typer.echo(table(models.list_models()))
