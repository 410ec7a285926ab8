"""`lps-gateway`: the gateway's command line."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from gateway.runtime.lifecycle import run_command, run_until_signalled
from gateway.runtime.logs import configure_logging
from gateway.runtime.tls import dev_certificate
from gateway.settings import BackendSettings, CardSettings, Settings, load_settings

if TYPE_CHECKING:
    from delegation.events import ChangeBus
    from gateway.server import Gateway
    from gateway.workers.supervisor import Node
    from mock_operator.server import MockOperator

DEMO_ADMIN = "899700000008"  # persona adm-roux


def _settings(config: Path | None, **overrides: Any) -> Settings:
    """`load_settings`, a bad value said on stderr in one line per key (exit 1), not as a
    traceback: `mss.policy: Input should be 'enforce' or 'report'`. The value itself is
    not repeated: it may be a secret."""
    try:
        return load_settings(config, **overrides)
    except ValidationError as invalid:
        errors = Console(stderr=True, soft_wrap=True)
        for error in invalid.errors(include_input=False):
            key = ".".join(str(part) for part in error["loc"])
            line = f"lps-gateway: configuration error: {key}: {error['msg']}"
            errors.print(line, highlight=False)
        raise typer.Exit(1) from None


class OutputFormat(enum.StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


class CsvTable(enum.StrEnum):
    software = "software"
    nonconformities = "nonconformities"


app = typer.Typer(
    help="API LPS gateway for MSSanté: Pro Santé Connect, delegation, historic web services.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _commands() -> None:
    """API LPS gateway for MSSanté (run a command: demo, ...)."""


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="TOML configuration file")] = None,
) -> None:
    """Run the gateway alone (every setting also from LPSGW_ environment variables); with
    `[server] workers` above 1 (the default: one per core), as that many processes."""
    from gateway.server import Gateway

    settings = _settings(config)
    configure_logging(settings.log)
    node: Gateway | Node = _node(settings) if settings.server.count() > 1 else Gateway(settings)

    def announce() -> None:
        describe_gateway(node, Console(soft_wrap=True))

    _run_node(node, run_until_signalled([node], announce))


def _node(settings: Settings) -> Node:
    from gateway.workers.supervisor import Node

    return Node(settings)


def _run_node(node: Gateway | Node, main: Any) -> None:
    """`run_command`, a configuration error or a worker that could not start said in one
    line (exit 1); exit 1 too when a worker of the node failed to stop cleanly."""
    from gateway.server import ConfigurationError
    from gateway.workers.supervisor import Node, NodeFailed

    try:
        run_command("lps-gateway", main)
    except ConfigurationError as exc:
        Console(stderr=True).print(f"lps-gateway: configuration error: {exc}", highlight=False)
        raise typer.Exit(1) from None
    except NodeFailed as exc:
        Console(stderr=True).print(f"lps-gateway: {exc}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    if isinstance(node, Node) and node.failed:
        raise typer.Exit(1)


@app.command()
def demo(
    data: Annotated[Path, typer.Option(help="Data directory")] = Path(".lps-gateway"),
    config: Annotated[Path | None, typer.Option(help="TOML configuration file")] = None,
) -> None:
    """Run the mock operator and the gateway in one process, on the default ports (the
    gateway in `[server] workers` processes beside it when above 1)."""
    settings = _settings(config, data_dir=data)
    if not settings.admin.idnats:  # the mock's operator administrator, Camille ROUX
        settings.admin.idnats = [DEMO_ADMIN]
    configure_logging(settings.log)
    from gateway.server import Gateway

    node: Gateway | Node = _node(settings) if settings.server.count() > 1 else Gateway(settings)
    _run_node(node, _demo(settings, node))


@app.command()
def usage(
    since: Annotated[
        dt.datetime | None, typer.Option(formats=["%Y-%m-%d"], help="first UTC day counted")
    ] = None,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="table, csv or json")
    ] = OutputFormat.table,
    table: Annotated[
        CsvTable,
        typer.Option(help="the table --format csv writes (table and json show every one)"),
    ] = CsvTable.software,
    config: Annotated[Path | None, typer.Option(help="TOML configuration file")] = None,
    data: Annotated[Path | None, typer.Option(help="Data directory")] = None,
) -> None:
    """Who still uses what: per software and interface, BAL, persons, sessions, messages,
    first and last seen; the BAL still on the historic platform; the MSSanté rules each
    software broke (refused, or let through under [mss] policy = "report"). Reads the
    gateway's database (in the demo's directory: the running demo's, a few seconds behind)."""
    from gateway.usage.cli import run_report

    overrides = {"data_dir": data} if data is not None else {}
    settings = _settings(config, **overrides)
    day = since.date() if since else None
    code = asyncio.run(run_report(settings, day, output.value, table.value))
    raise typer.Exit(code)


@app.command("check-config")
def check_config(
    config: Annotated[Path | None, typer.Option(help="TOML configuration file")] = None,
) -> None:
    """Check a configuration without starting: unknown keys, bad values, unreadable secret
    and certificate files, unreachable backends and database. Exit 1 with each problem on
    its own line (`section.key: problem`)."""
    from gateway.check_config import check

    problems, summary = asyncio.run(check(config))
    for problem in problems:
        print(problem)
    if not problems:
        print(summary)
    raise typer.Exit(1 if problems else 0)


@app.command()
def purge(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count, remove nothing")] = False,
    config: Annotated[Path | None, typer.Option(help="TOML configuration file")] = None,
    data: Annotated[Path | None, typer.Option(help="Data directory")] = None,
) -> None:
    """Remove the audit events and usage rows past [audit] / [usage] retention_days (what
    every node also does each [audit] purge_interval): per table, the rows and the cutoff."""
    from gateway.retention import run_purge

    settings = _settings(config, **({"data_dir": data} if data is not None else {}))
    code, lines = asyncio.run(run_purge(settings, dry_run=dry_run))
    console = Console(soft_wrap=True, stderr=code != 0)
    for line in lines:
        console.print(line, highlight=False, markup=False)
    raise typer.Exit(code)


admin_app = typer.Typer(
    help="Administer the running gateway through its /admin API (the local admin secret in "
    "its data directory, or an administrator's PSC token).",
    no_args_is_help=True,
)
app.add_typer(admin_app, name="admin")

ConfigOption = Annotated[
    Path | None, typer.Option(help="the gateway's TOML configuration file (its data directory)")
]
DataOption = Annotated[
    Path | None, typer.Option(help="the gateway's data directory (default: ./.lps-gateway)")
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        envvar="LPSGW_ADMIN_TOKEN",
        help="an administrator's PSC token instead of the local admin secret",
        show_default=False,
    ),
]


@admin_app.command("status")
def admin_status(
    config: ConfigOption = None,
    data: DataOption = None,
    token: TokenOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="the answer as JSON")] = False,
) -> None:
    """The running gateway: node, version, backends and their kind, default routing.
    Exits 2 when no gateway answers there."""
    from gateway.admin_client import AdminClient, AdminClientError, AdminTarget

    errors = Console(stderr=True)
    try:
        with AdminClient(AdminTarget.locate(config, data, token)) as client:
            status = client.get("/status")
    except AdminClientError as exc:
        errors.print(f"lps-gateway admin status: {exc}", highlight=False, markup=False)
        raise typer.Exit(exc.exit_code) from None
    console = Console(soft_wrap=True)
    if as_json:
        console.print_json(data=status)
        return
    console.print(f"node {status['node']}, lps-gateway {status['version']}", highlight=False)
    console.print(f"  {'http:':<10}{status['http']}", highlight=False)
    default = status["routing"]["default"]
    for backend in status["backends"]:
        mark = "  (default)" if backend["name"] == default else ""
        console.print(
            f"  {'backend:':<10}{backend['name']} ({backend['kind']}){mark}",
            highlight=False,
            markup=False,
        )


migrate_app = typer.Typer(
    help="Move BAL between backends, carried out by the running gateway (/admin/migrations): "
    "copy, verify, cutover (then a trailing sync until finish), rollback, status.",
    no_args_is_help=True,
)
app.add_typer(migrate_app, name="migrate")
JsonOption = Annotated[bool, typer.Option("--json", help="one JSON summary")]
BalsArgument = Annotated[list[str] | None, typer.Argument(help="BAL addresses", show_default=False)]
FromFileOption = Annotated[
    Path | None, typer.Option(help="more BAL, one a line (# comments)", show_default=False)
]
AllOnOption = Annotated[
    str | None,
    typer.Option(help="every BAL on this backend now (a wave; see --limit)", show_default=False),
]
LimitOption = Annotated[
    int | None, typer.Option(min=1, max=1000, help="with --all-on: at most this many BAL")
]


def _targets(
    bals: list[str] | None, from_file: Path | None, all_on: str | None, limit: int | None
) -> dict[str, Any]:
    """The request's BAL: named (and from a file), or a wave `all_on` a backend."""
    from gateway.bal_migration import cli as migrate

    if all_on is not None:
        if bals or from_file is not None:
            raise migrate.UsageError("name BAL or --all-on BACKEND, not both")
        return {"all_on": all_on, "limit": limit}
    if limit is not None:
        raise migrate.UsageError("--limit goes with --all-on")
    return {"bals": migrate.read_bals(bals or [], from_file)}


def _migrate(
    command: str, config: Path | None, data: Path | None, token: str | None, run: Any
) -> None:
    """Run `run(client)` against the located gateway; its int is the exit code."""
    from gateway.admin_client import AdminClient, AdminClientError, AdminTarget
    from gateway.bal_migration.cli import UsageError

    errors = Console(stderr=True)
    try:
        with AdminClient(AdminTarget.locate(config, data, token)) as client:
            code = run(client)
    except UsageError as exc:
        errors.print(f"lps-gateway migrate {command}: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    except AdminClientError as exc:
        errors.print(f"lps-gateway migrate {command}: {exc}", highlight=False, markup=False)
        raise typer.Exit(exc.exit_code) from None
    raise typer.Exit(code)


@migrate_app.command("copy")
def migrate_copy(
    bals: BalsArgument = None,
    to: Annotated[str, typer.Option("--to", help="the backend to copy to")] = "",
    jobs: Annotated[int, typer.Option(min=1, max=16, help="BAL copied at once")] = 1,
    max_rate: Annotated[
        float | None, typer.Option(min=0.001, help="at most this many source messages a second")
    ] = None,
    from_file: FromFileOption = None,
    all_on: AllOnOption = None,
    limit: LimitOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
    data: DataOption = None,
    token: TokenOption = None,
) -> None:
    """Copy each BAL from the backend holding it now to --to (provisioned there first),
    or bring its copy up to date. Exits 0 when every BAL was copied, 1 when some failed."""
    from gateway.bal_migration import cli as migrate

    def run(client: Any) -> int:
        if not to:
            raise migrate.UsageError("say where to copy with --to BACKEND")
        options: dict[str, Any] = {"to": to, "jobs": jobs, "max_rate": max_rate}
        started = migrate.start(
            client, "copy", **_targets(bals, from_file, all_on, limit), **options
        )
        console = Console(soft_wrap=True)
        ended = migrate.follow(client, started, None if as_json else console)
        if as_json:
            failed = [j["bal"] for j in ended if j["state"] != "done"]
            migrate.dump(console, {"jobs": ended, "failed": failed})
            return 1 if failed else 0
        return migrate.print_copies(console, Console(stderr=True), ended)

    _migrate("copy", config, data, token, run)


@migrate_app.command("verify")
def migrate_verify(
    bals: BalsArgument = None,
    to: Annotated[
        str | None, typer.Option("--to", help="compare with this backend (default: the copy's)")
    ] = None,
    from_file: Annotated[
        Path | None, typer.Option(help="more BAL, one a line (# comments)", show_default=False)
    ] = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
    data: DataOption = None,
    token: TokenOption = None,
) -> None:
    """Compare each BAL with its copy: every message as many times, same bytes, flags,
    internal date, in the mapped folder. Exits 0 only when identical, else lists each
    difference and exits 1."""
    from gateway.bal_migration import cli as migrate

    def run(client: Any) -> int:
        names = migrate.read_bals(bals or [], from_file)
        started = migrate.start(client, "verify", bals=names, to=to, jobs=1)
        console = Console(soft_wrap=True)
        ended = migrate.follow(client, started, None if as_json else console)
        if as_json:
            different = [
                j["bal"] for j in ended if j["state"] != "done" or not j["result"].get("identical")
            ]
            migrate.dump(console, {"jobs": ended, "different": different})
            return 1 if different else 0
        return migrate.print_verifications(console, Console(stderr=True), ended)

    _migrate("verify", config, data, token, run)


def _move(
    action: str,
    to: str | None,
    bals: list[str] | None,
    from_file: Path | None,
    as_json: bool,
    where: tuple[Path | None, Path | None, str | None],
    *,
    all_on: str | None = None,
    limit: int | None = None,
    jobs: int = 1,
) -> None:
    from gateway.bal_migration import cli as migrate

    def run(client: Any) -> int:
        targets = _targets(bals, from_file, all_on, limit)
        started = migrate.start(client, action, to=to, jobs=jobs, **targets)
        console = Console(soft_wrap=True)
        ended = migrate.follow(client, started, None if as_json else console)
        if as_json:
            failed = [j["bal"] for j in ended if j["state"] != "done"]
            migrate.dump(console, {"jobs": ended, "failed": failed})
            return 1 if failed else 0
        return migrate.print_moves(console, Console(stderr=True), ended)

    _migrate(action, *where, run)


@migrate_app.command("cutover")
def migrate_cutover(
    bals: BalsArgument = None,
    to: Annotated[str, typer.Option("--to", help="the backend the BAL moves to")] = "",
    jobs: Annotated[int, typer.Option(min=1, max=16, help="BAL cut over at once")] = 1,
    from_file: FromFileOption = None,
    all_on: AllOnOption = None,
    limit: LimitOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
    data: DataOption = None,
    token: TokenOption = None,
) -> None:
    """Move each copied BAL to --to: a last delta while its writes are held (a few
    seconds), a final verify, the registry's record switched, open sessions ended with a
    BYE naming the move, the MTA hook run; then a trailing sync copies what still reaches
    the old platform until `finish`. Exits 0 when every BAL moved, 1 when some did not."""
    if not to:
        Console(stderr=True).print("lps-gateway migrate cutover: say where with --to BACKEND")
        raise typer.Exit(2)
    where = (config, data, token)
    _move("cutover", to, bals, from_file, as_json, where, all_on=all_on, limit=limit, jobs=jobs)


@migrate_app.command("rollback")
def migrate_rollback(
    bals: BalsArgument = None,
    from_file: FromFileOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
    data: DataOption = None,
    token: TokenOption = None,
) -> None:
    """Take each cut-over BAL back where it came from, with what arrived or changed on the
    new platform since (the same hold, verify, switch and BYE as a cut-over)."""
    _move("rollback", None, bals, from_file, as_json, (config, data, token))


@migrate_app.command("finish")
def migrate_finish(
    bals: BalsArgument = None,
    from_file: FromFileOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
    data: DataOption = None,
    token: TokenOption = None,
) -> None:
    """Close each cut-over BAL's trailing sync, after a last pass."""
    _move("finish", None, bals, from_file, as_json, (config, data, token))


@migrate_app.command("status")
def migrate_status(
    bals: BalsArgument = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
    data: DataOption = None,
    token: TokenOption = None,
) -> None:
    """Per BAL: its copies (state, messages, bytes, last error, timings) and the job under
    way."""
    from gateway.bal_migration import cli as migrate

    def run(client: Any) -> int:
        found: list[dict[str, Any]] = client.get("/migrations")["migrations"]
        if bals:
            wanted = {b.strip().lower() for b in bals}
            found = [m for m in found if m["bal"] in wanted]
        console = Console(soft_wrap=True)
        if as_json:
            migrate.dump(console, {"migrations": found})
        else:
            migrate.print_status(console, found)
        return 0

    _migrate("status", config, data, token, run)


directory_app = typer.Typer(
    help="The operator's directory: people, BAL, backends, delegations.", no_args_is_help=True
)
app.add_typer(directory_app, name="directory")


@directory_app.command("import")
def directory_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV or JSON file")],
    format: Annotated[
        str | None, typer.Option("--format", help="csv or json (default: by the file's suffix)")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="report, write nothing")] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="remove what the file no longer lists")
    ] = False,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="import the good lines, list the bad ones")
    ] = False,
    as_json: JsonOption = False,
    config: Annotated[Path | None, typer.Option(help="TOML configuration file")] = None,
) -> None:
    """Load people, BAL (with their backend) and delegations from the national directory's
    MSSanté extraction (CSV) or JSON, in one transaction, into the gateway's database;
    exit 1 when the file is refused (nothing written)."""
    from gateway.directory_import.cli import format_of, run_import

    if format not in (None, "csv", "json"):
        raise typer.BadParameter("csv or json", param_hint="--format")
    options = {"dry_run": dry_run, "prune": prune, "skip_invalid": skip_invalid}
    settings = _settings(config)
    code = asyncio.run(
        run_import(settings, file, format_of(file, format), as_json=as_json, **options)
    )
    raise typer.Exit(code)


def describe_gateway(gateway: Gateway | Node, console: Console) -> None:
    settings = gateway.settings
    console.print(f"[bold]lps-gateway[/] listening on {gateway.http_url}", highlight=False)
    lines = [
        ("API LPS IMAP (STARTTLS)", gateway.imap, settings.imap.host),
        ("API LPS IMAP (TLS)", gateway.imaps, settings.imap.host),
        ("API LPS SMTP (STARTTLS)", gateway.smtp, settings.smtp.host),
    ]
    for name, front, host in lines:
        if front is not None:
            console.print(f"  {name + ':':<26}{host}:{front.port}", highlight=False)
    for name, backend in settings.backends.items():
        mark = " (default)" if name == settings.routing.default else ""
        what = f"{backend.kind}, {backend.where()}{mark}"
        console.print(f"  {f'backend {name}:':<26}{what}", highlight=False, markup=False)
    cert = settings.tls.cert or dev_certificate(settings.data_dir)[0]
    console.print(f"  {'TLS certificate:':<26}{cert}", highlight=False)
    rules = "enforced" if settings.mss.policy == "enforce" else "reported, not refused"
    console.print(
        f"  {'MSSanté header rules:':<26}{rules} ([mss] policy)", highlight=False, markup=False
    )
    for path, what in [
        ("/ui/delegations", "delegations page"),
        ("/ui/admin/usage", "usage page (admins)"),
        ("/v1", "API (/docs, /redoc)"),
        *([] if gateway.ops_url else [("/metrics", "metrics")]),
        *(
            [("/mss-msg-services/services", "historic web services")]
            if settings.legacy_front.enabled
            else []
        ),
    ]:
        console.print(f"  {what + ':':<26}{gateway.http_url}{path}", highlight=False)
    if gateway.legacy_https_port is not None:
        host = settings.legacy_front.https_host
        where = f"https://{host}:{gateway.legacy_https_port}/mss-msg-services/services"
        console.print(f"  {'same, CPS card (mTLS):':<26}{where}", highlight=False)
    if gateway.ops_url:
        ops = f"{gateway.ops_url} (/metrics, /readyz)"
        console.print(f"  {'operations:':<26}{ops}", highlight=False)


def configure_for_mock(settings: Settings, mock: MockOperator) -> None:
    """The gateway trusts the mock's PSC, logs its pages in as the mock's client, and
    carries sessions to the mock's platforms."""
    assert mock.psc is not None
    assert mock.master is not None
    client = mock.psc.clients.get(settings.ui.client_id)
    settings.psc.issuer = mock.issuer
    # The mock issues tokens to any client (lps-demo, a vendor's own): take them all.
    settings.psc.accept_any_audience = True
    if client is not None:
        settings.ui.client_secret = client.client_secret
        if not settings.psc.introspection_client_id:
            # Ask the mock, as the gateway's client, whether a session's PSC session
            # still lives (revalidation; `mock-operator end-session` ends it).
            settings.psc.introspection_client_id = client.client_id
            settings.psc.introspection_client_secret = client.client_secret
    configured = settings.backends  # from the file: added, or replacing by name
    settings.backends = {  # the mock's platforms, with the master login
        "modern": BackendSettings(
            imap_host=mock.settings.host,
            imap_port=mock.imap_port,
            smtp_host=mock.settings.host,
            smtp_port=mock.smtp_port,
            ca_file=mock.tls_cert,
            master_user=mock.master.user,
            master_password_file=mock.data_dir / "master.secret",
            keeps_sent_copy=True,  # the mock files submitted mail in Sent
            # a migration creates the BAL there first, then imports keeping UIDs
            # (the operator API)
            provision_url=f"{mock.http_url}/operator/mailboxes",
            import_url=f"{mock.http_url}/operator/mailboxes",
        ),
        # the historic platform's web services: the registry records "historic"
        # as the backend of jean.dupont@ and marie.petit@, and routing follows it;
        # its own IMAP (master login) serves the operator's tools
        "historic": BackendSettings(
            kind="legacy_ws",
            ws_url=f"{mock.http_url}/mss-msg-services/services",
            historic_imap=True,
            imap_host=mock.settings.host,
            imap_port=mock.historic_imap_port,
            ca_file=mock.tls_cert,
            master_user=mock.master.user,
            master_password_file=mock.data_dir / "master.secret",
            numhomologation="LPS-GATEWAY-DEMO",
        ),
    }
    settings.backends.update(configured)
    settings.routing.default = settings.routing.default or "modern"
    authority = mock.historic_auth.authority if mock.historic_auth else None
    if settings.cards.ca_file is None and authority is not None:
        # CPS cards of the mock's card CA (`mock-operator card PERSONA`), and its
        # revocation list, which `mock-operator card PERSONA --revoke` rewrites
        settings.cards = CardSettings(
            ca_file=authority.certificate_path, crl_file=authority.crl_path
        )


async def _demo(settings: Settings, node: Gateway | Node) -> None:
    """The mock operator, then the gateway in front of it: `node`, one gateway in this
    process, or the supervisor of its workers (the mock stays in this process)."""
    import dataclasses

    from delegation.seed import seed
    from gateway.server import Gateway
    from mock_operator.cli import describe, url_option
    from mock_operator.personas import default_personas
    from mock_operator.server import MockOperator

    # the registry the mock shares: the gateway's own, or on a node this process's, which
    # hears the workers' change events through the supervisor (SQLite)
    registry_owner = node if isinstance(node, Gateway) else Gateway(settings, bus=_bus_of(node))
    registry = await registry_owner.open_registry()
    if not isinstance(node, Gateway):
        node.migrated = True
    await seed(registry, [dataclasses.asdict(p) for p in default_personas()])
    mock = MockOperator(settings.mock, settings.data_dir / "mock-operator", registry=registry)
    console = Console(soft_wrap=True)
    gateway = node

    class _Configured:
        async def start(self) -> None:
            configure_for_mock(settings, mock)
            await node.start()

        async def drain(self) -> None:
            await node.drain()

        async def stop(self) -> None:
            try:
                await node.stop()
            finally:
                if registry_owner is not node:
                    await registry_owner.stop()

    def announce() -> None:
        console.rule("lps-gateway demo")
        describe(mock, console)
        describe_gateway(gateway, console)
        host = settings.imap.host
        assert gateway.imap is not None
        assert gateway.smtp is not None
        imap = f"imap://{host}:{gateway.imap.port}"
        smtp = f"smtp://{settings.smtp.host}:{gateway.smtp.port}"
        url = url_option(mock)
        console.print(
            "\nTry, as the secretary Sophie BERNARD (sec-bernard), delegated on Dr MARTIN's BAL:\n"
            f"  TOKEN=$(.venv/bin/mock-operator token sec-bernard{url})\n"
            f'  curl --oauth2-bearer "$TOKEN" --user claire.martin@medecin.mssante.fr: '
            f'"{imap}/INBOX;UID=1"\n'
            f'  curl --oauth2-bearer "$TOKEN" --user eve.moreau@medecin.mssante.fr: {imap}/'
            "   # refused\n"
            f"  printf 'From: claire.martin@medecin.mssante.fr\\r\\nTo: luc.durand@infirmier"
            f".mssante.fr\\r\\nSubject: essai\\r\\nX-MSS-NIL: 0\\r\\n\\r\\nBonjour\\r\\n' |\n"
            f'    curl --oauth2-bearer "$TOKEN" --user claire.martin@medecin.mssante.fr: '
            f"--mail-from claire.martin@medecin.mssante.fr \\\n"
            f"    --mail-rcpt luc.durand@infirmier.mssante.fr --upload-file - {smtp}\n"
            f'  curl -H "Authorization: Bearer $TOKEN" {gateway.http_url}/v1/mailboxes\n'
            "Delegations granted or revoked on the page apply at once, open sessions included.\n"
            f"A PSC session ended (.venv/bin/mock-operator end-session sec-bernard{url}) ends her "
            f"open sessions within {settings.psc.revalidate_interval:g} s.\n"
            "Tokens of any client id are accepted (psc.accept_any_audience: a mock only).\n"
            "With a CPS card instead of a token:\n"
            "  .venv/bin/mock-operator card dr-martin\n"
            f"  curl --ssl-reqd --cacert {settings.data_dir / 'dev-cert.pem'} "
            "--cert dr-martin.pem --key dr-martin-key.pem \\\n"
            f"    --login-options AUTH=EXTERNAL '{imap}/INBOX?ALL'\n"
            "  .venv/bin/mock-operator card dr-martin --revoke   # then refused\n"
            "The historic web services, on Dr MARTIN's modern BAL (NUMHOMOLOGATION names the "
            "software):\n"
            f"  TOKEN=$(.venv/bin/mock-operator token dr-martin{url})\n"
            f'  curl -H "Authorization: Bearer $TOKEN" -H "NUMHOMOLOGATION: HOMOL-DEMO-1" '
            f"-H 'Content-Type: application/json' \\\n"
            '    -d \'{"listFoldersInput": {"email": "claire.martin@medecin.mssante.fr"}}\' '
            f"{gateway.http_url}/mss-msg-services/services/Folder/rest/v1/listFolders\n"
            "  .venv/bin/lps-gateway usage          # who used what, by software and interface\n"
            "Ctrl-C stops the demo.",
            highlight=False,
        )

    await run_until_signalled([mock, _Configured()], announce)


def _bus_of(node: Node) -> ChangeBus | None:
    """The registry's bus of the supervisor's process: its relay on SQLite."""
    return node.bus if node.relays else None


def main() -> None:
    app()
