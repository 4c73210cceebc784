"""`teachlab experiment …`: create an experiment (arms × tasks × seeds), run it, compare its
arms with paired statistics, estimate its compute. The commands and their JSON are fixed, so
scripts can rely on them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from teachlab.cli.common import echo_progress, parse_sets, quiet_library_bars, table

app = typer.Typer(
    help="Experiments: arms compared on tasks and seeds, paired statistics, cost, estimates.",
    no_args_is_help=True,
)


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def spec_from(
    name: str | None,
    *,
    config: Path | None = None,
    tasks: list[str] | None = None,
    arms: str | None = None,
    seeds: str | None = None,
    teacher: str | None = None,
    student: str | None = None,
    modes: str | None = None,
    shots: str | None = None,
    sets: list[str] | None = None,
) -> Any:
    """An ExperimentSpec from a config file (if any) with the options on top of it."""
    from teachlab.errors import ConfigError
    from teachlab.experiments.spec import ExperimentSpec, read_config
    from teachlab.settings import get_settings

    data: dict[str, Any] = read_config(config) if config else {}
    settings = get_settings()
    if name:
        data["name"] = name
    if "name" not in data:
        raise ConfigError(
            "Name the experiment: teachlab experiment create NAME … (or name = … in the config)."
        )
    if tasks:
        data["tasks"] = tasks
    if arms:
        data["arms"] = _csv(arms)
    if seeds:
        try:
            data["seeds"] = [int(s) for s in _csv(seeds) or []]
        except ValueError:
            raise ConfigError(
                f"--seeds {seeds!r}: give whole numbers, e.g. --seeds 0,1,2."
            ) from None
    if modes:
        data["eval_modes"] = _csv(modes)
    if shots:
        try:
            data["eval_shots"] = [int(s) for s in _csv(shots) or []]
        except ValueError:
            raise ConfigError(f"--shots {shots!r}: give whole numbers, e.g. --shots 0,3.") from None
    data.setdefault("tasks", [])
    data.setdefault("arms", ["original", "arte"])
    data.setdefault("seeds", [0])
    data["teacher"] = teacher or data.get("teacher") or settings.teacher
    data["student"] = student or data.get("student") or settings.student
    data["study"] = {**(data.get("study") or {}), **parse_sets(sets)}
    return ExperimentSpec.from_dict(data)


@app.command("create")
def experiment_create(
    name: Annotated[str | None, typer.Argument(help="A short unique name.")] = None,
    task: Annotated[
        list[str] | None,
        typer.Option(help="A task: bigbench:NAME, upload:NAME, file:PATH, or the suite bbh."),
    ] = None,
    arms: Annotated[
        str | None,
        typer.Option(
            help="Arms, comma-separated: student, original, arte, random-pairs, reviewed, gold."
        ),
    ] = None,
    seeds: Annotated[str | None, typer.Option(help="Seeds, comma-separated (repeats).")] = None,
    teacher: Annotated[str | None, typer.Option(help="Teacher model reference.")] = None,
    student: Annotated[str | None, typer.Option(help="Student model reference.")] = None,
    modes: Annotated[
        str | None, typer.Option(help="Evaluation modes: loglik, cot (default both).")
    ] = None,
    shots: Annotated[str | None, typer.Option(help="Shot counts to evaluate, e.g. 0,3.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="A study setting for every task, key=value (repeatable)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="A TOML experiment config (configs/paper-arte.toml).")
    ] = None,
) -> None:
    """Create an experiment: one study per task and seed, sharing splits, probes and first drafts
    across the arms.

    Example: teachlab experiment create toy --task bigbench:ruin_names --task bigbench:navigate --arms original,arte --seeds 0,1
    """
    from teachlab.experiments.store import create_experiment

    spec = spec_from(
        name,
        config=config,
        tasks=task,
        arms=arms,
        seeds=seeds,
        teacher=teacher,
        student=student,
        modes=modes,
        shots=shots,
        sets=set_,
    )
    exp = create_experiment(spec)
    typer.echo(
        f"Created experiment #{exp.id} {spec.name!r}: {len(spec.arms)} arms × "
        f"{len(spec.tasks)} tasks × {len(spec.seeds)} seeds ({len(exp.members)} studies)"
    )


@app.command("run")
def experiment_run(name: Annotated[str, typer.Argument(help="Experiment name or id.")]) -> None:
    """Run an experiment in the foreground; run it again to resume where it stopped.

    Example: teachlab experiment run toy
    """
    from teachlab.stages.launch import execute_here, launch_experiment

    launched = launch_experiment(name, requested_by="cli")
    run = launched.run
    if run.status == "running":
        typer.echo(
            f"Experiment {name!r} is running already (run #{run.id}); watch it with "
            "`teachlab run list`.",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(f"Run #{run.id}: experiment {name!r}", err=True)
    quiet_library_bars()
    final = execute_here(run.id, echo=echo_progress)  # type: ignore[arg-type]
    typer.echo(f"Run #{final.id} {final.status}" + (f": {final.error}" if final.error else ""))
    raise typer.Exit(0 if final.status == "succeeded" else 1)


@app.command("compare")
def experiment_compare(
    name: Annotated[str, typer.Argument(help="Experiment name or id.")],
    as_json: Annotated[bool, typer.Option("--json", help="The results as JSON on stdout.")] = False,
) -> None:
    """Compare the arms: accuracy per arm × task × seed × mode with CIs, paired differences from
    the reference arm with bootstrap CIs and permutation p-values, and cost.

    Example: teachlab experiment compare toy --json
    """
    from teachlab.experiments.results import results

    found = results(name)
    if as_json:
        typer.echo(json.dumps(found, indent=2, default=str))
        return
    from teachlab.experiments.compare import markdown

    typer.echo(markdown(found))


@app.command("estimate")
def experiment_estimate(
    name: Annotated[str | None, typer.Argument(help="Experiment name or id.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="Estimate a TOML experiment config instead.")
    ] = None,
    gpu: Annotated[
        str | None, typer.Option(help="Also the time on this accelerator (e.g. h100, a100).")
    ] = None,
    calibrate: Annotated[
        bool, typer.Option(help="Measure this machine with a short pass (seconds).")
    ] = True,
) -> None:
    """Tokens, FLOPs and time per stage before spending them: on this machine (calibrated by a
    short measured pass) and on a named accelerator.

    Example: teachlab experiment estimate --config configs/paper-arte.toml --gpu a100
    """
    from teachlab.errors import ConfigError
    from teachlab.experiments.estimate import estimate
    from teachlab.experiments.estimate_text import render

    if (name is None) == (config is None):
        raise ConfigError("Name an experiment, or give --config FILE (one of the two).")
    if config is not None:
        spec = spec_from(None, config=config)
    else:
        from teachlab.experiments.store import load_experiment

        spec = load_experiment(name).spec  # type: ignore[arg-type]
    typer.echo(render(estimate(spec, gpu=gpu, calibrate=calibrate)))


@app.command("list")
def experiment_list() -> None:
    """List experiments.

    Example: teachlab experiment list
    """
    from teachlab.experiments.spec import ExperimentSpec
    from teachlab.experiments.store import list_experiments

    rows = []
    for row in list_experiments():
        spec = ExperimentSpec.from_dict(row.spec)
        rows.append(
            {
                "id": row.id,
                "name": row.name,
                "arms": ",".join(spec.arms),
                "tasks": len(spec.tasks),
                "seeds": ",".join(map(str, spec.seeds)),
                "created": row.created_at.strftime("%Y-%m-%d %H:%M"),
            }
        )
    typer.echo(table(rows))
