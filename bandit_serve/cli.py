"""The ``bandit-serve`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bandit_serve.errors import ConfigError

app = typer.Typer(
    name="bandit-serve",
    help="Serve model versions as arms of a bandit; simulate policies offline.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


@app.callback()
def main() -> None:
    """Serve model versions as arms of a bandit; simulate policies offline."""


def fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@app.command()
def check(config: Annotated[Path, typer.Argument(help="Experiment config file (YAML).")]) -> None:
    """Validate an experiment config file and print what it defines."""
    from bandit_serve.config import load_config

    try:
        cfg = load_config(config)
    except ConfigError as err:
        raise fail(str(err)) from None
    for exp in cfg.experiments:
        arms = ", ".join(exp.arm_names)
        typer.echo(
            f"{exp.name}: {len(exp.arms)} arms ({arms}), policy {exp.policy.kind}, "
            f"reward {exp.reward.kind} in {list(exp.reward.bounds)}, "
            f"wait {exp.reward.wait_seconds:g}s then {exp.reward.on_expiry}"
        )


if __name__ == "__main__":  # pragma: no cover
    app()
