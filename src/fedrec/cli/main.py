"""The ``fedrec`` command line: thin glue over the library, with rich output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedrec.config import ConfigError, dump_config, load_config

app = typer.Typer(
    help="Privacy-preserving federated recommendation: run, evaluate and inspect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect and fetch data sets.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect configurations.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")


def _add_deploy() -> None:
    from fedrec.cli.deploy import deploy_app

    app.add_typer(deploy_app, name="deploy")


_add_deploy()

console = Console()
err = Console(stderr=True)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value: section.key=value (repeatable)."),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: $FEDREC_DATA_DIR, then the cache)."),
]


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _metrics_table(title: str, columns: dict[str, dict[str, float]]) -> Table:
    """Metrics as rows and splits as columns, so the table fits a terminal."""
    keys: list[str] = []
    for metrics in columns.values():
        keys.extend(k for k in metrics if k not in keys)
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    for k in keys:
        table.add_row(k, *(_fmt(m[k]) if k in m else "" for m in columns.values()))
    return table


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="A TOML run configuration (see configs/).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")],
    set_: SetOption = None,
    data_dir: DataDirOption = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a finished run in --out.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a federated run from its last checkpoint.")
    ] = False,
    mlflow: Annotated[
        bool, typer.Option("--mlflow", help="Track the run in MLflow (same as tracking.mlflow).")
    ] = False,
) -> None:
    """Train and evaluate one configuration; write config.toml, metrics.jsonl, summary.json."""
    from fedrec.data.errors import DataError
    from fedrec.experiment.outputs import RunDirectory, RunDirectoryError
    from fedrec.experiment.pipeline import run_experiment

    overrides = list(set_ or [])
    if data_dir is not None:
        overrides.append(f'data.dir="{data_dir}"')
    if mlflow:
        overrides.append("tracking.mlflow=true")
    try:
        cfg = load_config(config, overrides)
        run_dir = RunDirectory(out, overwrite=overwrite)
    except (ConfigError, RunDirectoryError) as exc:
        raise _fail(str(exc)) from exc

    console.print(
        f"[bold]fedrec run[/] {config} → {out}  "
        f"(data={cfg.data.name}, split={cfg.data.split}, model={cfg.model.name})"
    )

    def valid_text(record: dict[str, Any]) -> str:
        return "  ".join(
            f"{k.removeprefix('valid/')}={_fmt(v)}"
            for k, v in record.items()
            if k.startswith("valid/") and ("@10" in k or k.endswith("RMSE"))
        )

    def on_epoch(record: dict[str, Any]) -> None:
        loss = record.get("train_loss")
        loss_s = f"loss={loss:.4f}  " if isinstance(loss, float) and loss == loss else ""
        mark = " *" if record.get("best") else ""
        console.print(
            f"  epoch {record.get('epoch', '?'):>3}  {loss_s}{valid_text(record)}  "
            f"[dim]{record.get('seconds', 0.0):.1f}s[/]{mark}"
        )

    try:
        if cfg.mode == "federated":
            with Progress(
                TextColumn("[bold]round {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=console,
            ) as progress:
                task = progress.add_task("", total=cfg.federated.rounds)
                latest = {"valid": ""}

                def on_round(record: dict[str, Any]) -> None:
                    if any(k.startswith("valid/") for k in record):
                        latest["valid"] = valid_text(record)
                    loss = record.get("loss", float("nan"))
                    up = record.get("bytes_up_per_client", 0.0) / 1024
                    eps = record.get("epsilon")
                    eps_s = f"  ε={eps:.2f}" if isinstance(eps, float) else ""
                    aborted = "  [red]aborted[/]" if record.get("aborted") else ""
                    progress.update(
                        task,
                        completed=record["round"],
                        description=f"loss={loss:.4f}  {latest['valid']}  "
                        f"up={up:.1f} KiB/client{eps_s}{aborted}",
                    )

                summary = run_experiment(cfg, run_dir, on_eval=on_round, resume=resume)
        else:
            summary = run_experiment(cfg, run_dir, on_eval=on_epoch, resume=resume)
    except (DataError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc

    rows = {"valid": summary["valid"], "test": summary["test"]}
    if "test_full" in summary:
        rows["test (full)"] = summary["test_full"]
    best = (
        f"round {summary['best_round']}"
        if cfg.mode == "federated"
        else f"epoch {summary['best_epoch']}"
    )
    console.print(
        f"[bold]{cfg.data.name} · {cfg.model.name} · {cfg.mode}[/] · best {best} "
        f"(chosen on validation) · {summary['seconds']:.1f}s"
    )
    console.print(_metrics_table("", rows))
    if "privacy" in summary:
        p = summary["privacy"]
        both = (
            f" against the server, {p['epsilon_released_model']:.3f} for the released model"
            if "epsilon_vs_server" in p
            else ""
        )
        console.print(
            f"privacy: ε = {p['epsilon']:.3f}{both} at δ = {p['delta']:g} "
            f"({p.get('mechanism', '')}, {p.get('accountant', 'per-client composition')})"
        )
    if summary.get("stop_reason") and "budget" in summary["stop_reason"]:
        console.print(f"[yellow]stopped: {summary['stop_reason']}[/]")
    console.print(f"results in {out}/summary.json")


@app.command()
def recommend(
    run_dir: Annotated[
        Path | None, typer.Argument(help="A finished simulated run directory.")
    ] = None,
    user: Annotated[
        str, typer.Option("--user", "-u", help="Raw user id, as in the data set.")
    ] = "",
    k: Annotated[int, typer.Option("-k", help="How many items.")] = 10,
    state: Annotated[
        Path | None,
        typer.Option(
            "--state", help="A deployed client's state directory (instead of a run directory)."
        ),
    ] = None,
) -> None:
    """A user's top-k items (with titles where the data set has them), from the user's
    private state and the shared model; items the user already has are left out."""
    from fedrec.data.errors import DataError
    from fedrec.experiment.recommend import recommend as top_k

    if not user:
        raise _fail("--user is required")
    if (run_dir is None) == (state is None):
        raise _fail("give either a run directory or --state CLIENT_STATE_DIR")
    rows: list[tuple[int, object, str | None, float]]
    try:
        if state is not None:
            from fedrec.deploy.client import ClientError, recommend_from_state

            try:
                recs_d = recommend_from_state(state, user, k)
            except ClientError as exc:
                raise _fail(str(exc)) from exc
            rows = [(r["rank"], r["item"], r["title"], r["score"]) for r in recs_d]
        else:
            assert run_dir is not None
            rows = [(r.rank, r.item, r.title, r.score) for r in top_k(run_dir, user, k)]
    except (DataError, ConfigError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    table = Table(title=f"top {k} for user {user}")
    for col in ("rank", "item", "title", "score"):
        table.add_column(col, justify="right" if col in ("rank", "score") else "left")
    for rank, item, title, score in rows:
        table.add_row(str(rank), str(item), title or "", f"{score:.3f}")
    console.print(table)


@app.command()
def audit(
    run_dir: Annotated[Path, typer.Argument(help="A federated run directory.")],
    clients: Annotated[int, typer.Option(help="Clients to attack (at most).")] = 500,
    canaries: Annotated[
        int,
        typer.Option(
            help="Canaries for a run trained without them (its configuration is trained once "
            "more with them inserted; a run with [audit] canaries keeps its own audit)."
        ),
    ] = 1000,
    out: Annotated[
        Path | None, typer.Option(help="Where to write the JSON (default RUN_DIR/audit.json).")
    ] = None,
) -> None:
    """Canary audit (attack AUC, empirical epsilon lower bound, accounted epsilon), item
    inference from one replayed round against a popularity prior, and membership inference
    on the final model."""
    from fedrec.data.errors import DataError
    from fedrec.experiment.audit import audit_run
    from fedrec.utils.atomic import atomic_write_text

    try:
        report = audit_run(run_dir, clients=clients, canaries=canaries)
    except (DataError, ConfigError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    target = out or run_dir / "audit.json"
    atomic_write_text(target, json.dumps(report, indent=2) + "\n")
    if target.name == "audit.json":
        from fedrec.tracking import attach_artifact

        if attach_artifact(run_dir, target):  # the run was tracked: its MLflow run gets it too
            console.print(f"added {target.name} to the run's MLflow run")
    can = report["canary_audit"]
    table = Table(title=f"privacy audit of {run_dir}")
    table.add_column("audit")
    table.add_column("figure", justify="right")
    table.add_column("reference", justify="right")

    def fmt(v: object) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    view = can["adversary_view"]
    if "auc" in can:
        table.add_row(
            f"canary attack AUC ({can['canaries']} canaries, saw {view})", fmt(can["auc"]), "0.500"
        )
        table.add_row(
            f"empirical epsilon, lower bound at {can['confidence']:.0%}",
            fmt(can["empirical_epsilon"]),
            f"accounted {fmt(can['accounted_epsilon'])}",
        )
        table.add_row(
            "Gaussian estimate (Andrew et al.)", fmt(can["gaussian_estimate"]["epsilon"]), ""
        )
    else:
        table.add_row("canary audit", can.get("error", "-"), "")
    inf = report["item_inference"]
    if inf:
        table.add_row(
            f"item inference, advantage over popularity ({report['server_view']})",
            fmt(inf["advantage_over_popularity_mean"]),
            "0.000",
        )
    mia = report.get("membership_inference")
    if mia:
        table.add_row("membership advantage (final model)", fmt(mia["advantage"]), "0.000")
        table.add_row("membership AUC (popularity-matched)", fmt(mia["auc"]), "0.500")
    console.print(table)
    console.print(f"written: {target}")


@app.command()
def tune(
    config: Annotated[Path, typer.Argument(help="The TOML configuration to tune.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Study directory (resumable).")],
    trials: Annotated[int, typer.Option("--trials", "-n", help="Finished trials wanted.")] = 20,
    space: Annotated[
        Path | None,
        typer.Option("--space", help="Search space TOML (keys as --set); default per model."),
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Parallel worker processes.")] = 1,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Stop starting trials after S seconds.")
    ] = None,
    set_: SetOption = None,
    data_dir: DataDirOption = None,
    mlflow: Annotated[
        bool, typer.Option("--mlflow", help="Track the study and each trial in MLflow.")
    ] = False,
) -> None:
    """Search hyperparameters on validation (Optuna TPE, pruning on the validation curve),
    then retrain the best configuration and read its test metrics once."""
    from fedrec.data.errors import DataError

    try:
        from fedrec.tune.space import load_space
        from fedrec.tune.study import tune as run_study
    except ImportError as exc:
        raise _fail(f"fedrec tune needs Optuna: pip install 'fedrec[tune]' ({exc})") from exc
    overrides = list(set_ or [])
    if data_dir is not None:
        overrides.append(f'data.dir="{data_dir}"')
    if mlflow:
        overrides.append("tracking.mlflow=true")
    try:
        cfg = load_config(config, overrides)
        search = load_space(cfg, space)
        summary = run_study(
            cfg,
            out,
            trials=trials,
            space=search,
            jobs=jobs,
            timeout=timeout,
            echo=console.print,
        )
    except (ConfigError, DataError, FileNotFoundError, ValueError, RuntimeError) as exc:
        raise _fail(str(exc)) from exc
    best = summary["best"]
    console.print(
        f"[bold]best trial {best['trial']}[/] of {summary['trials']['total']}: "
        f"{summary['config_monitor']} = {best['valid']:.4f}  "
        + "  ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
    )
    console.print(
        _metrics_table(
            "best configuration, retrained (test read once)",
            {"valid": summary["retrained"]["valid"], "test": summary["retrained"]["test"]},
        )
    )
    if "privacy" in summary:
        console.print(
            f"[yellow]privacy: {summary['privacy']['trials_on_private_data']} trials trained "
            "on the private data; the tuned configuration's privacy cost includes them[/]"
        )
    console.print(f"results in {out}/tune.json, {out}/best.toml, {out}/trials.csv")


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Finished run directories.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path(
        "report.html"
    ),
) -> None:
    """One self-contained HTML page comparing runs (no network needed to open it)."""
    from fedrec.report.html import ReportError, write_report

    try:
        path = write_report(run_dirs, out)
    except ReportError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"written: {path}")


@data_app.command("info")
def data_info(
    name: Annotated[str, typer.Argument(help="Data set name, e.g. ml-100k, ml-1m.")],
    data_dir: DataDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Users, items, interactions, density and the interactions-per-user distribution."""
    from fedrec.data.errors import DataError
    from fedrec.data.info import describe
    from fedrec.data.loaders import load_dataset

    try:
        stats = describe(load_dataset(name, data_dir))
    except DataError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        console.print_json(json.dumps(stats, default=str))
        return
    table = Table(title=f"data set {name}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in stats.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                table.add_row(f"{key} {sub}", _fmt(v))
        else:
            table.add_row(key, _fmt(value))
    console.print(table)


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="Data set name, e.g. ml-100k.")],
    data_dir: DataDirOption = None,
) -> None:
    """Find a data set (data dir, cache) or download and verify it into the cache."""
    from fedrec.data.errors import DataError
    from fedrec.data.fetch import locate

    try:
        path = locate(name, data_dir, download=True)
    except DataError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"{name}: {path}")


@config_app.command("show")
def config_show(
    config: Annotated[Path | None, typer.Argument(help="A TOML config; omit for defaults.")] = None,
    set_: SetOption = None,
) -> None:
    """Print the resolved configuration (defaults, file, then --set overrides)."""
    try:
        cfg = load_config(config, list(set_ or []))
    except ConfigError as exc:
        raise _fail(str(exc)) from exc
    console.print(dump_config(cfg), markup=False, highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
