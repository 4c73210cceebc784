"""`teachlab serve` and `teachlab worker`: the web app and the job worker."""

from __future__ import annotations

import logging
from typing import Annotated

import typer


def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    worker: Annotated[bool, typer.Option(help="Start the job worker with the app.")] = True,
) -> None:
    """Start the web app (and its job worker).

    Example: teachlab serve --port 7860
    """
    from pages import launch

    launch(host=host, port=port, start_worker=worker)


def worker() -> None:
    """Run the job worker in the foreground (the app starts one itself).

    Example: teachlab worker
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from teachlab.jobs.queue import run_worker

    run_worker()
