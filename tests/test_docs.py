"""The README documents every command a user can type."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperGroup

from teachlab.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _commands(group: TyperGroup, prefix: str) -> list[str]:
    out = []
    for name, command in group.commands.items():
        if command.hidden:
            continue
        path = f"{prefix} {name}"
        if isinstance(command, TyperGroup):
            out += _commands(command, path)
        else:
            out.append(path)
    return out


def test_every_cli_command_is_in_the_readme() -> None:
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    commands = _commands(root, "teachlab")
    assert len(commands) >= 12
    missing = [c for c in commands if c not in README]
    assert missing == [], f"document these commands in README.md: {missing}"


def test_every_command_has_an_example_in_its_help() -> None:
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)

    def walk(group: TyperGroup) -> list[object]:
        found = []
        for command in group.commands.values():
            if isinstance(command, TyperGroup):
                found += walk(command)
            elif not command.hidden:
                found.append(command)
        return found

    lacking = [c.name for c in walk(root) if "Example:" not in (c.help or "")]
    assert lacking == []
