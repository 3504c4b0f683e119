"""``fedrec deploy``: run on Flower's deployment engine, locally or across machines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedrec.config import ConfigError, RunConfig, load_config

deploy_app = typer.Typer(
    help="Run a configuration as a real federation on Flower (TLS, authenticated nodes).",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value: section.key=value (repeatable)."),
]


def _config(config: Path, set_: list[str] | None, clients: int) -> RunConfig:
    """The configuration with one organisation per SuperNode (for a random partition)."""
    overrides = list(set_ or [])
    cfg = load_config(config, overrides)
    if cfg.federated.partition == "random":
        cfg = load_config(config, [*overrides, f"federated.silos={clients}"])
    return cfg


@deploy_app.command("local")
def local(
    config: Annotated[Path, typer.Argument(help="A federated TOML configuration.")],
    clients: Annotated[int, typer.Option("--clients", "-n", help="SuperNodes (one per client).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")],
    set_: SetOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a finished run.")] = False,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 3600.0,
) -> None:
    """Start a SuperLink and N SuperNodes on loopback (TLS, node authentication), run the
    configuration, write the same outputs as a simulated run, and tear everything down."""
    from fedrec.deploy.client import ClientError, supported
    from fedrec.deploy.launcher import LaunchError, deploy_local
    from fedrec.experiment.outputs import RunDirectory, RunDirectoryError

    if clients < 2:
        raise _fail("--clients must be at least 2")
    try:
        cfg = _config(config, set_, clients)
        supported(cfg)
        RunDirectory(out, overwrite=overwrite)
    except (ConfigError, RunDirectoryError, ClientError) as exc:
        raise _fail(str(exc)) from exc
    console.print(
        f"[bold]fedrec deploy local[/] {config}: {clients} SuperNodes on loopback over TLS → {out}"
    )
    try:
        summary = deploy_local(cfg, clients, out, timeout=timeout)
    except LaunchError as exc:
        raise _fail(str(exc)) from exc
    test = summary.get("test", {})
    console.print(
        f"done: {summary['rounds']} rounds, best round {summary['best_round']}, "
        f"test HR@10 {test.get('HR@10', float('nan')):.4f}, NDCG@10 "
        f"{test.get('NDCG@10', float('nan')):.4f}; results in {out}/summary.json"
    )


@deploy_app.command("shards")
def shards(
    config: Annotated[Path, typer.Argument(help="A federated TOML configuration.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for client-NNNNN/ shards.")],
    set_: SetOption = None,
) -> None:
    """Cut the data set into one shard per client, as the simulator partitions it; copy each
    client-NNNNN/ folder to its device and point its SuperNode at it (shard-dir)."""
    from fedrec.data.errors import DataError
    from fedrec.deploy.shards import write_shards
    from fedrec.experiment.pipeline import prepare

    try:
        cfg = load_config(config, list(set_ or []))
        paths = write_shards(cfg, prepare(cfg).split, out)
    except (ConfigError, DataError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    console.print(f"{len(paths)} client shards in {out}")


@deploy_app.command("credentials")
def credentials(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write them to.")],
    nodes: Annotated[int, typer.Option("--nodes", "-n", help="SuperNode key pairs.")] = 1,
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="A name or IP address SuperNodes and the flwr CLI reach the SuperLink by "
            "(repeatable: give every one). localhost, 127.0.0.1 and ::1 are always added.",
        ),
    ] = None,
) -> None:
    """A CA with a SuperLink certificate, and one authentication key pair per SuperNode
    (register each .pub with `flwr supernode register`).

    The certificate names every --host (IP addresses as IP entries, names as DNS entries) and
    always localhost, 127.0.0.1 and ::1: the SuperLink's own SuperExec connects to it over
    loopback, and without them no run ever leaves "pending"."""
    from fedrec.deploy.credentials import CredentialError, node_keys, server_names, tls_certificates

    hosts = list(host or [])
    try:
        names = server_names(hosts)
    except CredentialError as exc:
        raise _fail(str(exc)) from exc
    tls = tls_certificates(out / "tls", hosts)
    for i in range(nodes):
        node_keys(out / "keys", f"node-{i:05d}")
    console.print(
        f"CA {tls.ca_cert}, server {tls.server_cert} for "
        f"{', '.join(str(n.value) for n in names)}; {nodes} node keys in {out}/keys"
    )


@deploy_app.command("app")
def flower_app(
    out: Annotated[Path, typer.Argument(help="Folder for the Flower App (for `flwr run`).")],
) -> None:
    """Write the Flower App that `flwr run` ships to a SuperLink."""
    from fedrec.deploy.launcher import write_app

    write_app(out)
    console.print(
        f"Flower App in {out}: flwr run {out} <superlink> --run-config "
        '\'config-path="/path/on/server.toml" out="/path/on/server/run"\''
    )
