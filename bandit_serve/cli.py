"""The ``bandit-serve`` command line."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from bandit_serve.errors import ConfigError
from bandit_serve.service.options import AppArgs

if TYPE_CHECKING:
    from rich.table import Table

    from bandit_serve.client import AnalysisArm, ServiceUnavailable
    from bandit_serve.config import ArmConfig

app = typer.Typer(
    name="bandit-serve",
    help="Serve model versions as arms of a bandit; simulate policies offline.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


arm_app = typer.Typer(help="Act on one arm: rollback, restore.", no_args_is_help=True)
experiment_app = typer.Typer(
    help="Act on an experiment (pause, resume, promote, reset) or read its audit log.",
    no_args_is_help=True,
)
keys_app = typer.Typer(help="API keys: make a new one.", no_args_is_help=True)
app.add_typer(arm_app, name="arm")
app.add_typer(keys_app, name="keys")
app.add_typer(experiment_app, name="experiment")

URL_OPTION = typer.Option(help="Service URL.", envvar="BANDIT_SERVE_URL")


def _print_version(value: bool) -> None:
    if value:
        from bandit_serve import __version__

        typer.echo(f"bandit-serve {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Serve model versions as arms of a bandit; simulate policies offline."""


def _stdout_console() -> Console:
    """Tables for stdout: the terminal's width (or $COLUMNS); 160 columns in a pipe."""
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(width=160 if wide else None)


def fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@app.command()
def check(
    config: Annotated[Path, typer.Argument(help="Experiment config file (YAML).")],
    load_models: Annotated[
        bool,
        typer.Option(
            "--load-models/--no-load-models",
            help="Load every arm's model (import callables, unpickle joblib files, open ONNX "
            "files), probe endpoints and look for Serve deployments, as the service will.",
        ),
    ] = True,
) -> None:
    """Validate a config file, load every arm's model, print what it defines.

    Exits 2 with one line per problem, naming the arm and the cause."""
    from bandit_serve.config import load_config

    try:
        cfg = load_config(config)
    except ConfigError as err:
        raise fail(str(err)) from None
    failures = []
    for exp in cfg.experiments:
        arms = ", ".join(exp.arm_names)
        typer.echo(
            f"{exp.name}: {len(exp.arms)} arms ({arms}), policy {exp.policy.kind}, "
            f"reward {exp.reward.kind} in {list(exp.reward.bounds)}, "
            f"wait {exp.reward.wait_seconds:g}s then {exp.reward.on_expiry}"
        )
        if load_models:
            failures += [f"{exp.name}/{arm}: {why}" for arm, why in _unloadable(exp.arms)]
    for line in failures:
        console.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
    if failures:
        raise typer.Exit(2)
    if load_models:
        n = sum(len(e.arms) for e in cfg.experiments)
        typer.echo(f"{n} model{'s' if n != 1 else ''} loaded")


def _unloadable(arms: Sequence[ArmConfig]) -> list[tuple[str, str]]:
    """The arms whose model cannot be loaded or reached, each with the cause in one line:
    a file or callable that does not load, an endpoint that does not answer a probe (or
    whose credentials' variable is not set), a Serve deployment that is not running."""
    from bandit_serve.config.models import DeploymentModel

    failed = {}
    deployments = []
    for arm in arms:
        if isinstance(arm.model, DeploymentModel):
            deployments.append(arm)
            continue
        problem = _load_problem(arm.model)
        if problem is not None:
            failed[arm.name] = problem
    failed.update(_missing_deployments(deployments))
    return [(arm.name, failed[arm.name]) for arm in arms if arm.name in failed]


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def _load_problem(ref: Any) -> str | None:
    """Why a model of this process's kinds does not load (an endpoint: is not reached)."""
    import asyncio

    from bandit_serve.config.models import HttpModel, OnnxModel, SklearnModel
    from bandit_serve.models import LoadedModel
    from bandit_serve.models.http import HttpArm

    if isinstance(ref, HttpModel):
        try:
            arm = HttpArm(ref)
        except ConfigError as err:  # names the variable, never a value
            return f"endpoint {ref.url}: {err}"

        async def probe() -> str | None:
            try:
                return await arm.probe()
            finally:
                await arm.aclose()

        return asyncio.run(probe())
    if isinstance(ref, SklearnModel):
        what = f"model file {ref.path}"
    elif isinstance(ref, OnnxModel):
        what = f"ONNX file {ref.path}"
    else:
        what = ref.target
    try:
        LoadedModel(ref)
    except Exception as err:  # any failure of the model's own code is the finding
        return f"cannot load {what}: {_one_line(err)}"
    return None


def _missing_deployments(arms: Sequence[ArmConfig]) -> dict[str, str]:
    """The ``deployment`` arms whose Serve deployment is not running, looked up on the
    cluster this process is connected to, else at ``RAY_ADDRESS``."""
    if not arms:
        return {}
    from bandit_serve.config.models import DeploymentModel
    from bandit_serve.service.serve_app import check_deployments

    refs = [arm.model for arm in arms if isinstance(arm.model, DeploymentModel)]
    try:
        problems = check_deployments(refs, os.environ.get("RAY_ADDRESS"))
    except ConnectionError as err:
        return {
            arm.name: f"cannot look for Serve deployment {ref.app}/{ref.deployment}: {err}"
            for arm, ref in zip(arms, refs, strict=True)
        }
    return {
        arm.name: problem
        for arm, problem in zip(arms, problems, strict=True)
        if problem is not None
    }


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
    rows = [[_breakable(label), *numbers] for label, *numbers in table_rows(data)]
    screen = _stdout_console()
    screen.print(
        _fit_table(title, TABLE_HEADER, rows, screen.width) or _table(title, TABLE_HEADER, rows)
    )

    if out is not None:
        from bandit_serve.simulation.plots import plot_regret, plot_share

        out.mkdir(parents=True, exist_ok=True)
        write_summary(out / "summary.json", data)
        write_csv(out / "regret.csv", results)
        plot_regret(out / "regret.png", sc.name, results)
        plot_share(out / "share.png", sc.name, [a.name for a in sc.arms], results)
        typer.echo(f"wrote {out}/summary.json, regret.csv, regret.png, share.png")


def _breakable(label: str) -> str:
    """``kind(a=1, b=2)`` as ``kind (a=1, b=2)``: a narrow column wraps it at the space."""
    head, paren, rest = label.partition("(")
    return f"{head.rstrip()} ({rest}" if paren and head and not head.endswith(" ") else label


LABEL_MIN = 12  # a label column narrower than this reads badly: split the table instead


def _table(
    title: str | None, headers: Sequence[str], rows: Sequence[Sequence[str]], fixed: bool = False
) -> Table:
    """Column 0 holds labels (wrapped at spaces, else anywhere; never cut), the others
    numbers, right-aligned. ``fixed``: each number column exactly as wide as its widest
    value or its header's longest word (the header wraps), the rest for the labels."""
    from rich.table import Table

    table = Table(title=title)
    for i, head in enumerate(headers):
        if i == 0:
            table.add_column(head, overflow="fold")
            continue
        need = max(len(r[i]) for r in rows) if rows else 1
        width = max(need, *(len(w) for w in head.split())) if fixed else None
        table.add_column(head, justify="right", min_width=need, width=width)
    for row in rows:
        table.add_row(*row)
    return table


def _fit_table(
    title: str | None, headers: Sequence[str], rows: Sequence[Sequence[str]], width: int
) -> Table | None:
    """A table of ``width`` columns at most that cuts no number and no label: as is when it
    fits, else with narrow number columns (wrapped headers); None when even that leaves
    the labels fewer than :data:`LABEL_MIN` columns."""
    cells = [list(headers), *rows]
    natural = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if sum(w + 3 for w in natural) + 1 <= width:
        return _table(title, headers, rows)
    numbers = [
        max([len(r[i]) for r in rows] + [len(w) for w in headers[i].split()])
        for i in range(1, len(headers))
    ]
    label = width - 1 - sum(w + 3 for w in numbers) - 3
    if label < min(LABEL_MIN, natural[0]):
        return None
    return _table(title, headers, rows, fixed=True)


_RUN = AppArgs.model_fields


def _opt(field: str, flag: str | None = None, **kw: Any) -> Any:
    """A ``run`` option whose default and help come from :class:`AppArgs`."""
    f = _RUN[field]
    names = [flag] if flag else []
    return typer.Option(*names, help=f.description, **kw)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Experiment config file (YAML).")],
    host: Annotated[str, typer.Option(help="HTTP host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    redis_url: Annotated[str | None, _opt("redis_url")] = None,
    address: Annotated[
        str | None, typer.Option(help="Join this Ray cluster instead of starting one.")
    ] = None,
    router_replicas: Annotated[int, _opt("router_replicas", min=1)] = _RUN[
        "router_replicas"
    ].default,
    model_batch_size: Annotated[
        int, _opt("model_max_batch_size", "--model-batch-size", min=1)
    ] = _RUN["model_max_batch_size"].default,
    max_ongoing_requests: Annotated[int, _opt("max_ongoing_requests", min=1)] = _RUN[
        "max_ongoing_requests"
    ].default,
    max_queued_requests: Annotated[int, _opt("max_queued_requests", min=-1)] = _RUN[
        "max_queued_requests"
    ].default,
    retry_after_s: Annotated[float, _opt("retry_after_s", min=0)] = _RUN["retry_after_s"].default,
    model_timeout_s: Annotated[float, _opt("model_timeout_s", min=0.001)] = _RUN[
        "model_timeout_s"
    ].default,
    router_own_thread: Annotated[bool, _opt("router_own_thread")] = _RUN[
        "router_own_thread"
    ].default,
    insecure: Annotated[
        bool,
        typer.Option(help="Serve without an auth section on a non-loopback address."),
    ] = False,
    engine: Annotated[
        str,
        typer.Option(
            help="ray: Ray Serve (scales out to a cluster). local: one machine, no Ray: "
            "uvicorn with every model in-process."
        ),
    ] = "ray",
    workers: Annotated[
        int,
        typer.Option(help="Local engine: uvicorn worker processes (they share Redis).", min=1),
    ] = 1,
) -> None:
    """Serve the config's experiments until Ctrl-C, on Ray Serve or the local engine
    (redeploys or reloads on file change)."""
    from bandit_serve.errors import BanditServeError
    from bandit_serve.service.runner import check_engine, supervise

    args = AppArgs(
        config=str(config),
        redis_url=redis_url,
        router_replicas=router_replicas,
        model_max_batch_size=model_batch_size,
        max_ongoing_requests=max_ongoing_requests,
        max_queued_requests=max_queued_requests,
        retry_after_s=retry_after_s,
        model_timeout_s=model_timeout_s,
        router_own_thread=router_own_thread,
    )
    from bandit_serve.config import load_config
    from bandit_serve.service.options import check_exposure

    try:  # the quick checks here, before a child and Ray start
        check_engine(engine, workers, address, args)
        check_exposure(load_config(config), host, insecure)
    except BanditServeError as err:
        raise fail(str(err)) from None
    options = {
        "args": args.model_dump(),
        "host": host,
        "port": port,
        "address": address,
        "insecure": insecure,
        "engine": engine,
        "workers": workers,
    }
    code = supervise(options)
    if code:
        raise typer.Exit(code)


SCOPE_HELP = "scopes are predict:<experiment|*>, reward:<experiment|*>, read, admin"
API_KEY_HELP = "API key, sent as a Bearer header (when the service has auth on)."
ApiKey = Annotated[str | None, typer.Option(help=API_KEY_HELP, envvar="BANDIT_SERVE_API_KEY")]


@app.command()
def loadgen(
    url: Annotated[str, URL_OPTION] = "http://127.0.0.1:8000",
    experiment: Annotated[str, typer.Option(help="Experiment name.")] = "digits",
    inputs: Annotated[
        Path | None,
        typer.Option(
            "--inputs",
            "-i",
            help="JSON-lines file: each line a JSON value sent as the inputs, or "
            '{"inputs": ..., "reward"?: number, "expected"?: value, "unit_id"?, "context"?}. '
            "Without it, the built-in generator sends digit images (experiment digits only).",
        ),
    ] = None,
    requests: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Predictions to send (default: 3000 for digits, each line of --inputs once; "
            "more than the file's lines starts the file again).",
        ),
    ] = None,
    reward: Annotated[
        float | None,
        typer.Option(
            help="Reward posted for lines with neither reward nor expected (default: none is "
            "posted, and the experiment's default applies when the wait window ends). A "
            'line\'s "reward" is posted as is; "expected" gives 1 when the prediction equals '
            "it, else 0 (what the digits generator does).",
        ),
    ] = None,
    rate: Annotated[float, typer.Option(min=0.1, help="Predictions per second.")] = 100.0,
    concurrency: Annotated[int, typer.Option(min=1, help="Predictions in flight, at most.")] = 16,
    max_delay: Annotated[float, typer.Option(help="Rewards arrive after 0..this seconds.")] = 2.0,
    miss_rate: Annotated[float, typer.Option(min=0, max=1, help="Share never rewarded.")] = 0.1,
    seed: Annotated[int, typer.Option()] = 0,
    api_key: ApiKey = None,
    timeout: Annotated[float, typer.Option(min=0.01, help="Seconds per attempt.")] = 10.0,
    retries: Annotated[
        int, typer.Option(min=0, help="Retries where safe (see bandit_serve.client).")
    ] = 3,
    progress_every: Annotated[
        float, typer.Option(min=0.1, help="Seconds between progress lines when not a terminal.")
    ] = 5.0,
) -> None:
    """Act as an application and its downstream app: predictions now, rewards later.

    Shows the traffic; exits 1 when requests failed (their reasons counted in one line)."""
    import asyncio
    from collections.abc import Iterator

    from bandit_serve.client import AsyncClient
    from bandit_serve.loadgen import (
        InputsFileError,
        LoadItem,
        count_inputs,
        cycle_inputs,
        digits_items,
        make_progress,
        run_loadgen,
    )

    items: Iterator[LoadItem]
    if inputs is None:
        if experiment != "digits":
            raise fail(
                f"--inputs FILE is needed to drive experiment {experiment!r}: the built-in "
                "generator sends digit images, for the demo's experiment 'digits'"
            )
        items, total = digits_items(seed), requests or 3000
    else:
        try:
            lines = count_inputs(inputs)
        except InputsFileError as err:
            raise fail(str(err)) from None
        items, total = cycle_inputs(inputs), requests or lines

    async def main() -> Any:
        async with AsyncClient(
            url,
            api_key,
            timeout=timeout,
            retries=retries,
            seed=seed,
            max_connections=2 * concurrency + 16,
        ) as client:
            return await run_loadgen(
                client,
                experiment,
                items,
                requests=total,
                rate=rate,
                concurrency=concurrency,
                max_delay=max_delay,
                miss_rate=miss_rate,
                default_reward=reward,
                seed=seed,
                progress=make_progress(experiment, sys.stdout.isatty(), progress_every),
            )

    try:
        res = asyncio.run(main())
    except InputsFileError as err:
        raise fail(str(err)) from None
    typer.echo(res.summary())
    if res.failures:
        line = res.failure_line()
        if res.sent == 0 and "ConnectError" in line:  # nothing ever answered there
            line += "; " + _IS_IT_UP.format(where=f"at {url}")
        raise fail(line, code=1)


@app.command()
def analyze(
    name: Annotated[str, typer.Argument(help="Experiment name.")],
    url: Annotated[str, URL_OPTION] = "http://127.0.0.1:8000",
    baseline: Annotated[str | None, typer.Option(help="Baseline arm (default: the first).")] = None,
    alpha: Annotated[float, typer.Option(min=0.0001, max=0.5)] = 0.05,
    tau: Annotated[
        float | None, typer.Option(min=0, help="mSPRT mixing scale (default: the server's).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON (the API's answer).")
    ] = False,
    api_key: ApiKey = None,
) -> None:
    """Print the statistical analysis of an experiment (GET .../analysis)."""
    import json

    from bandit_serve.client import Client, ClientError, ServiceUnavailable

    try:
        with Client(url, api_key, timeout=30) as client:
            rep = client.analysis(name, baseline=baseline, alpha=alpha, tau=tau)
    except ServiceUnavailable as err:
        raise fail(_unreachable(url, err)) from None
    except ClientError as err:
        raise fail(str(err)) from None
    if as_json:
        typer.echo(json.dumps(rep.raw, indent=2))
        return

    out = _stdout_console()
    title = f"{name}: each arm against {rep.baseline} ({rep.test}, alpha {rep.alpha:g})"
    headers = [head for head, _ in _ANALYSIS_COLUMNS]
    rows = [[cell(a) for _, cell in _ANALYSIS_COLUMNS] for a in rep.arms]
    table = _fit_table(title, headers, rows, out.width)
    if table is not None:
        out.print(table)
    else:  # too narrow for one table: the comparison, then each arm's own numbers
        compare, own = list(range(7)), [0, *range(7, len(headers))]
        for columns, caption in ((compare, title), (own, None)):
            head = [headers[i] for i in columns]
            body = [[r[i] for i in columns] for r in rows]
            out.print(_fit_table(caption, head, body, out.width) or _table(caption, head, body))
    out.print(f"sample ratio check: p = {_num(rep.srm_p_value, '.3g')}", highlight=False)
    if rep.srm_warning:
        out.print(f"[bold red]WARNING[/bold red] {rep.srm_warning}")
    for a in rep.arms:
        if a.note and a.note != "baseline":
            out.print(f"{a.name}: {a.note}", highlight=False)
    out.print("* " + "\n* ".join(rep.notes), highlight=False)


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


# (header, the cell of an arm); the first seven compare with the baseline
_ANALYSIS_COLUMNS: tuple[tuple[str, Callable[[AnalysisArm], str]], ...] = (
    ("arm", lambda a: a.name),
    ("mean", lambda a: _num(a.mean)),
    ("effect", lambda a: _num(a.effect, "+.4f")),
    ("CI low", lambda a: _num(a.ci_low, "+.4f")),
    ("CI high", lambda a: _num(a.ci_high, "+.4f")),
    ("p fixed*", lambda a: _num(a.p_value)),
    ("p sequential", lambda a: _num(a.p_value_sequential)),
    ("samples", lambda a: f"{a.samples:,}"),
    ("P(best)", lambda a: _num(a.p_best, ".3f")),
    ("exp. loss", lambda a: _num(a.expected_loss)),
    ("IPW mean", lambda a: _num(a.ipw_mean)),
)


def _client(url: str, api_key: str | None) -> Any:
    from bandit_serve.client import Client

    return Client(url, api_key=api_key, retries=2)


def _call(url: str, api_key: str | None, what: Callable[[Any], Any]) -> Any:
    """One call through the Python client; a refusal or an unreachable service exits with
    its reason in one line."""
    from bandit_serve.client import ApiError, ClientError, ServiceUnavailable

    try:
        with _client(url, api_key) as c:
            return what(c)
    except ApiError as err:
        raise fail(f"{err.status}: {err.detail}") from None
    except ServiceUnavailable as err:
        raise fail(_unreachable(url, err)) from None
    except ClientError as err:
        raise fail(f"cannot reach {url}: {err}") from None


_IS_IT_UP = "is `bandit-serve run` up {where}? pass --url or set BANDIT_SERVE_URL"


def _unreachable(url: str, err: ServiceUnavailable) -> str:
    """One line for a service that gave no usable answer; when nothing answered at all,
    what to do about it."""
    text = f"cannot reach {url}: {err}"
    if err.status is None:  # no HTTP answer: nothing serves there
        text += "; " + _IS_IT_UP.format(where="there")
    return text


def _acted(result: Any, what: str) -> None:
    change = "done" if result.changed else "nothing to do (already so)"
    arms = ", ".join(f"{a} {s}" for a, s in result.arms.items())
    typer.echo(f"{what}: {change}. Experiment {result.state}; arms: {arms}")


Reason = Annotated[str | None, typer.Option(help="Why (kept in the audit log).")]
Url = Annotated[str, URL_OPTION]


@arm_app.command("rollback")
def arm_rollback(
    experiment: str,
    arm: str,
    reason: Reason = None,
    url: Url = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Stop routing to ARM (its pending rewards still count). Not the baseline."""
    _acted(_call(url, api_key, lambda c: c.rollback(experiment, arm, reason)), f"roll back {arm}")


@arm_app.command("restore")
def arm_restore(
    experiment: str,
    arm: str,
    reason: Reason = None,
    url: Url = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Route to a rolled-back ARM again (its guardrail statistics start from now)."""
    _acted(_call(url, api_key, lambda c: c.restore(experiment, arm, reason)), f"restore {arm}")


@experiment_app.command("pause")
def experiment_pause(
    experiment: str,
    reason: Reason = None,
    url: Url = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """All traffic to the baseline; decisions are still logged and rewardable."""
    _acted(_call(url, api_key, lambda c: c.pause(experiment, reason)), "pause")


@experiment_app.command("resume")
def experiment_resume(
    experiment: str,
    reason: Reason = None,
    url: Url = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """The policy routes again."""
    _acted(_call(url, api_key, lambda c: c.resume(experiment, reason)), "resume")


@experiment_app.command("promote")
def experiment_promote(
    experiment: str,
    arm: Annotated[str | None, typer.Argument(help="The arm (a canary may leave it out).")] = None,
    reason: Reason = None,
    url: Url = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """All traffic to ARM; the other arms retire."""
    result = _call(url, api_key, lambda c: c.promote(experiment, arm, reason))
    _acted(result, f"promote {arm or 'the candidate'}")


@experiment_app.command("reset")
def experiment_reset(
    experiment: str,
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm: statistics start from zero.")
    ] = False,
    reason: Reason = None,
    url: Url = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """A fresh start: statistics from zero, old event ids unknown (statuses and the audit
    log stay). Needs --yes."""
    if not yes:
        raise fail(f"reset discards every statistic of {experiment}; add --yes to confirm")
    result = _call(url, api_key, lambda c: c.reset(experiment, confirm=experiment, reason=reason))
    _acted(result, "reset")


@experiment_app.command("events")
def experiment_events(
    experiment: str,
    since: Annotated[str | None, typer.Option(help="Only events after this id.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    url: Url = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """The audit log: who changed what, when and why."""
    import datetime as dt

    events = _call(url, api_key, lambda c: c.events(experiment, since, limit))
    if not events:
        typer.echo("no events")
    for e in events:
        when = dt.datetime.fromtimestamp(e.time, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        arm = f" {e.arm}" if e.arm else ""
        typer.echo(f"{e.id}  {when}Z  {e.kind}{arm} by {e.actor}: {e.reason}")


@keys_app.command("new")
def keys_new(
    name: Annotated[str, typer.Argument(help="The key's name (the actor in the audit log).")],
    scopes: Annotated[
        list[str],
        typer.Option(
            "--scopes",
            help="predict:<experiment|*>, reward:<experiment|*>, read, admin (repeat, or "
            "comma-separated).",
        ),
    ],
    rate_per_second: Annotated[
        float | None, typer.Option(min=0.001, help="A quota shared by all replicas.")
    ] = None,
) -> None:
    """Make a new API key: prints the key (give it to its user; it is shown once) and the
    line for the config's ``auth.keys`` (which holds only its SHA-256)."""
    import re
    import secrets

    from bandit_serve.config import NAME_PATTERN, key_digest
    from bandit_serve.config.auth import SCOPE_PATTERN

    if not re.match(NAME_PATTERN, name):
        raise fail(f"key name {name!r} must match {NAME_PATTERN}")
    wanted = [x.strip() for s in scopes for x in s.split(",") if x.strip()]
    bad = [x for x in wanted if not re.match(SCOPE_PATTERN, x)]
    if bad or not wanted:
        raise fail(f"unknown scope(s) {', '.join(bad) or '(none given)'}; {SCOPE_HELP}")
    key = "bsk_" + secrets.token_urlsafe(32)
    line = f'- {{name: {name}, sha256: "{key_digest(key)}", scopes: [{", ".join(wanted)}]'
    if rate_per_second is not None:
        line += f", rate_per_second: {rate_per_second:g}"
    typer.echo(f"key: {key}")
    typer.echo("add under auth.keys in the config (the key itself is not stored anywhere):")
    typer.echo(f"  {line}}}")


if __name__ == "__main__":  # pragma: no cover
    app()
