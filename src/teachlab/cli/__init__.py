"""The `teachlab` command line: serve the app, fetch models and data, manage studies and runs.

One module per sub-command; errors from TeachLab print one clear line and exit 1, usage
errors exit 2.
"""

from __future__ import annotations

import sys

import typer

from teachlab.cli import data, experiment, export, models, runs, serve, study
from teachlab.errors import TeachlabError

app = typer.Typer(
    help="TeachLab: teacher drafts, student scores, you review, DPO aligns, SFT distils.\n\n"
    "Start with `teachlab data fetch`, `teachlab models fetch`, then `teachlab serve` "
    "or `teachlab demo`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _prepare() -> None:
    """Every command sees an up-to-date study database (migrated in place when older)."""
    from teachlab.db import init_db

    init_db()


app.add_typer(models.app, name="models")
app.add_typer(data.app, name="data")
app.add_typer(study.app, name="study")
app.add_typer(runs.round_app, name="round")
app.add_typer(runs.run_app, name="run")
app.add_typer(export.app, name="export", help="Export curated data; import it back.")
app.add_typer(experiment.app, name="experiment")
app.command()(serve.serve)
app.command()(serve.worker)
app.command()(runs.check)
app.command()(runs.demo)


def usage_line(exc: typer.TyperException) -> str:
    """A usage error (unknown command, bad option value, missing argument) as one line naming
    the command's help, instead of click's boxed, several-line form."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return f"{message}{where}"


def main() -> None:
    """The command, behind the error boundary: every failure is one line on standard error."""
    try:
        # Not standalone: usage errors come back here to be printed as one line.
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # click's errors, as typer carries them
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
            typer.echo(f"error: {usage_line(exc)}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except TeachlabError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        from teachlab.boundary import one_line

        typer.echo(f"error: {one_line(exc)}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
