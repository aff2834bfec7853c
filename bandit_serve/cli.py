"""The ``bandit-serve`` command line."""

from __future__ import annotations

import sys
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


@app.command()
def simulate(
    scenario: Annotated[Path, typer.Argument(help="Scenario file (YAML).")],
    runs: Annotated[int | None, typer.Option(help="Independent runs (overrides the file).")] = None,
    horizon: Annotated[
        int | None, typer.Option(help="Decisions per run (overrides the file).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (overrides the file).")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write summary.json, regret.csv, regret.png and share.png here."),
    ] = None,
) -> None:
    """Run the served policies offline on a scenario and report their regret."""
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from bandit_serve.simulation import load_scenario, simulate_policy
    from bandit_serve.simulation.report import (
        TABLE_HEADER,
        summary,
        table_rows,
        write_csv,
        write_summary,
    )

    try:
        sc = load_scenario(scenario, runs=runs, horizon=horizon, seed=seed)
    except ConfigError as err:
        raise fail(str(err)) from None
    if out is not None and out.exists() and not out.is_dir():
        raise fail(f"--out {out} exists and is not a directory")

    results = []
    with Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        TextColumn("{task.completed:>9,}/{task.total:,}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        for i, entry in enumerate(sc.policies):
            task = progress.add_task(entry.name, total=sc.horizon)

            def advance(t: int, task: TaskID = task) -> None:
                progress.update(task, completed=t)

            results.append(simulate_policy(sc, entry, i, progress=advance))
    data = summary(sc, results)
    bound = data["lai_robbins"]
    title = f"{sc.name}: {sc.runs} runs x {sc.horizon:,} decisions, seed {sc.seed}"
    if bound is not None:
        title += f"; Lai-Robbins bound {bound:.1f}"
    table = Table(*TABLE_HEADER, title=title)
    for row in table_rows(data):
        table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 160).print(table)

    if out is not None:
        from bandit_serve.simulation.plots import plot_regret, plot_share

        out.mkdir(parents=True, exist_ok=True)
        write_summary(out / "summary.json", data)
        write_csv(out / "regret.csv", results)
        plot_regret(out / "regret.png", sc.name, results)
        plot_share(out / "share.png", sc.name, [a.name for a in sc.arms], results)
        typer.echo(f"wrote {out}/summary.json, regret.csv, regret.png, share.png")


if __name__ == "__main__":  # pragma: no cover
    app()
