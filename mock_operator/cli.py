"""`mock-operator`: run the mock operator, ask a running one for a persona's token or to
end a persona's PSC sessions, build an IHE_XDM.ZIP for a vendor's own tests, run a
conformance campaign on an LPS, or probe an API LPS server from the client's side."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gateway.runtime.files import write_private
from gateway.runtime.lifecycle import run_command, run_until_signalled
from gateway.runtime.logs import configure_logging
from gateway.settings import load_settings
from mock_operator.conformance.probe import (
    DEFAULT_STEP,
    ProbeTarget,
    default_mailboxes,
    development_certificates,
    run_probe,
)
from mock_operator.conformance.probe_sasl import LoginPlan
from mock_operator.conformance.probe_wire import Endpoint, TlsPolicy
from mock_operator.conformance.results import Report, Status
from mock_operator.personas import default_personas
from mock_operator.seed import cda_document
from mock_operator.xdm import MAX_CDA_BYTES, CdaError, build_xdm

if TYPE_CHECKING:
    from mock_operator.server import MockOperator

# The server and the report renderer (FastAPI, the platforms) are imported by the commands
# that need them: `token`, `xdm` or `card` start in a fraction of the time.

DEFAULT_URL = "http://127.0.0.1:8090"
app = typer.Typer(
    help="A faithful MSSanté test operator on one laptop (mock Pro Santé Connect, ...).",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True, soft_wrap=True)  # an error is one line, whatever the width


@app.command()
def serve(
    data: Annotated[Path, typer.Option(help="Data directory")] = Path(".mock-operator"),
    config: Annotated[Path | None, typer.Option(help="TOML configuration file")] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on")] = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP port (0: any free port)")] = None,
    imap_port: Annotated[int | None, typer.Option(help="IMAP port (0: any free port)")] = None,
    smtp_port: Annotated[int | None, typer.Option(help="SMTP port (0: any free port)")] = None,
    historic_imap_port: Annotated[
        int | None, typer.Option(help="Historic platform's IMAP port (0: any free port)")
    ] = None,
) -> None:
    """Run the mock operator until Ctrl-C."""
    given = {
        "host": host,
        "http_port": http_port,
        "imap_port": imap_port,
        "smtp_port": smtp_port,
        "historic_imap_port": historic_imap_port,
    }
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    settings = load_settings(config, data_dir=data, mock=overrides)
    configure_logging(settings.log)
    from mock_operator.server import MockOperator

    mock = MockOperator(settings.mock, settings.data_dir)

    def announce() -> None:
        describe(mock, Console(soft_wrap=True))

    run_command("mock-operator", run_until_signalled([mock], announce))


def describe(mock: MockOperator, console: Console) -> None:
    """What a user needs to know to use a running mock."""
    console.print(f"[bold]mock-operator[/] listening on {mock.http_url}", highlight=False)
    console.print(f"  Pro Santé Connect issuer: {mock.issuer}", highlight=False)
    host = mock.settings.host
    console.print(f"  IMAP (STARTTLS):          imap://{host}:{mock.imap_port}", highlight=False)
    console.print(f"  SMTP submission:          smtp://{host}:{mock.smtp_port}", highlight=False)
    console.print(
        f"  historic web services:    {mock.http_url}/mss-msg-services/services/"
        "<Service>/rest/v1/<operation> (and /soap/v1, ?wsdl)",
        highlight=False,
    )
    console.print(
        f"  historic platform IMAP:   imap://{host}:{mock.historic_imap_port} "
        "(STARTTLS; operator master login, CPS card)",
        highlight=False,
    )
    console.print(f"  clients and secrets:      {mock.data_dir / 'clients.toml'}", highlight=False)
    console.print(f"  CIBA approval page:       {mock.issuer}/ciba", highlight=False)
    console.print(f"  open PSC sessions:        {mock.issuer}/sessions", highlight=False)
    console.print(f"  TLS certificate:          {mock.tls_cert}", highlight=False)
    if mock.scenarios is not None:
        found = mock.scenarios.ports().items()
        ports = ", ".join(f"{name} imap {p['imap']} smtp {p['smtp']}" for name, p in found)
        console.print(
            f"  TLS scenarios (to refuse): {ports}; trust {mock.scenarios.files.trust}",
            highlight=False,
        )
    console.print(
        f"  a token for a persona:    .venv/bin/mock-operator token dr-martin{url_option(mock)}",
        highlight=False,
    )
    sys.stdout.flush()


def url_option(mock: MockOperator) -> str:
    """What the commands that ask a running mock need to find this one (nothing on the
    default port)."""
    return "" if mock.http_url == DEFAULT_URL else f" --url {mock.http_url}"


@app.command()
def token(
    persona: Annotated[str, typer.Argument(help="Persona key (dr-martin, sec-bernard, ...)")],
    lifetime: Annotated[int | None, typer.Option(help="Token lifetime in seconds")] = None,
    client_id: Annotated[str, typer.Option(help="Client the token is issued to")] = "lps-demo",
    means: Annotated[str | None, typer.Option(help="card or e-cps")] = None,
    url: Annotated[str, typer.Option(help="The running mock operator")] = DEFAULT_URL,
) -> None:
    """Print a fresh PSC access token for PERSONA, issued by the running mock."""
    body: dict[str, Any] = {"persona": persona, "client_id": client_id}
    if lifetime is not None:
        body["lifetime"] = lifetime
    if means is not None:
        body["means"] = means
    typer.echo(_ask(url, "/_test/token", body)["access_token"])


@app.command("end-session")
def end_session(
    persona: Annotated[str, typer.Argument(help="Persona key or idNat")],
    url: Annotated[str, typer.Option(help="The running mock operator")] = DEFAULT_URL,
) -> None:
    """End every open PSC session of PERSONA on the running mock: its tokens turn inactive."""
    answer = _ask(url, "/_test/end-session", {"persona": persona})
    ended = answer["ended"]
    typer.echo(f"{ended} PSC session{'' if ended == 1 else 's'} of {answer['persona']} ended")


def _ask(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST to a test endpoint of the running mock; exit 1 saying why when it cannot."""
    try:
        response = httpx.post(f"{url.rstrip('/')}{path}", json=body, timeout=10)
    except httpx.HTTPError as exc:
        err.print(f"cannot reach the mock operator at {url}: {exc}. Is it running?")
        raise typer.Exit(1) from None
    is_json = response.headers.get("content-type", "").startswith("application/json")
    if response.status_code != 200:
        detail = response.json().get("detail") if is_json else response.text
        err.print(f"the mock operator refused: {detail}")
        raise typer.Exit(1)
    if not is_json:
        err.print(f"{url} answered, but not as a mock operator does (no JSON)")
        raise typer.Exit(1)
    answer: dict[str, Any] = response.json()
    return answer


DEMO_DATA = Path(".lps-gateway") / "mock-operator"


def _data_dir(data: Path | None) -> Path:
    """The mock's data directory: `data`, else the demo's (run from the demo's directory),
    else the standalone mock's."""
    if data is not None:
        return data
    return DEMO_DATA if DEMO_DATA.is_dir() else Path(".mock-operator")


@app.command()
def card(
    persona: Annotated[str, typer.Argument(help="Persona key (dr-martin, sec-bernard, ...)")],
    out: Annotated[Path, typer.Option(help="Where to write the card's files")] = Path("."),
    revoke: Annotated[
        bool, typer.Option("--revoke", help="Revoke the persona's cards instead")
    ] = False,
    data: Annotated[
        Path | None,
        typer.Option(help="Mock data directory (default: the demo's, else .mock-operator)"),
    ] = None,
) -> None:
    """Write a CPS card (certificate and key, PEM) for PERSONA, issued by the mock's card CA;
    with --revoke, put every card issued to PERSONA on the CA's revocation list (a running
    gateway or mock reads it again at the next login)."""
    from mock_operator.historic.auth import CpsAuthority

    found = default_personas().get(persona)
    if found is None:
        err.print(f"no persona {persona!r} (see: mock-operator personas)")
        raise typer.Exit(1)
    authority = CpsAuthority.load_or_create(_data_dir(data) / "cps")
    if revoke:
        cards = authority.issued_to(found.idnat)
        added = authority.revoke(*cards)
        typer.echo(
            f"{added} card{'' if added == 1 else 's'} of {persona} revoked "
            f"({len(cards)} issued); revocation list: {authority.crl_path}"
        )
        return
    certificate, key = authority.issue(found)
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{persona}.pem", out / f"{persona}-key.pem"
    cert_path.write_bytes(certificate)
    write_private(key_path, key)
    typer.echo(f"certificate: {cert_path}")
    typer.echo(f"key:         {key_path}")
    typer.echo(f"card CA:     {authority.certificate_path}")


@app.command()
def xdm(
    cda: Annotated[
        Path | None, typer.Option(help="A CDA R2 document (XML); default: a built-in sample")
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the archive (mode 0600)")
    ] = Path("IHE_XDM.ZIP"),
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object: file, size, headers, subject")
    ] = False,
) -> None:
    """Build an IHE_XDM.ZIP (METADATA.XML, the CDA, INDEX.HTM, README.TXT) from a CDA
    document, and print the X-MSS headers and the subject of the message that carries it."""
    if cda is None:
        data = cda_document()
    else:
        try:
            with cda.open("rb") as handle:
                data = handle.read(MAX_CDA_BYTES + 1)
        except OSError as exc:
            err.print(f"{cda}: {exc.strerror or exc}")
            raise typer.Exit(1) from None
    try:
        built = build_xdm(data)
    except CdaError as exc:
        err.print(f"{cda}: {exc}")
        raise typer.Exit(1) from None
    write_private(output, built.archive)
    headers = dict(built.headers())
    if as_json:
        facts = {"file": str(output), "size": len(built.archive), "headers": headers}
        typer.echo(json.dumps({**facts, "subject": built.subject}, ensure_ascii=False))
        return
    entries = "METADATA.XML, DOC0001.XML, INDEX.HTM, README.TXT"
    typer.echo(f"{output} : {len(built.archive)} octets ({entries})")
    typer.echo("À joindre sous le nom IHE_XDM.ZIP, au message qui porte ces en-têtes :")
    for name, value in headers.items():
        typer.echo(f"{name}: {value}")
    typer.echo(f"Subject: {built.subject}")


conformance_app = typer.Typer(
    help="Conformance campaigns: the mock judges an LPS against Référentiel #2 (ECO.*).",
    no_args_is_help=True,
)
app.add_typer(conformance_app, name="conformance")


@conformance_app.command("start")
def conformance_start(
    software: Annotated[str, typer.Option(help="The software tested")],
    version: Annotated[str, typer.Option(help="Its version")] = "",
    client_id: Annotated[
        str | None, typer.Option(help="Its PSC client id (only its tokens count)")
    ] = None,
    persona: Annotated[
        list[str] | None, typer.Option(help="A persona it uses (repeat; default: any)")
    ] = None,
    url: Annotated[str, typer.Option(help="The running mock operator")] = DEFAULT_URL,
) -> None:
    """Open a campaign on the running mock; its id is printed alone on the last line."""
    body: dict[str, Any] = {"software": software, "version": version, "personas": persona or []}
    if client_id:
        body["client_id"] = client_id
    answer = _ask(url, "/_test/conformance/campaigns", body)
    typer.echo(f"Campagne ouverte ; suivez-la sur {url.rstrip('/')}{answer['url']}")
    scenarios = answer.get("tls_scenarios")
    if isinstance(scenarios, dict) and isinstance(scenarios.get("ports"), dict):
        ports = ", ".join(
            f"{name} {p.get('imap')}/{p.get('smtp')}" for name, p in scenarios["ports"].items()
        )
        typer.echo(f"Certificats à refuser (IMAP/SMTP) : {ports} ; AC : {scenarios.get('trust')}")
    typer.echo(answer["id"])


@conformance_app.command("report")
def conformance_report(
    campaign: Annotated[str, typer.Argument(help="The campaign's id")],
    format: Annotated[str, typer.Option(help="html, junit or json")] = "html",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout)")
    ] = None,
    url: Annotated[str, typer.Option(help="The running mock operator")] = DEFAULT_URL,
) -> None:
    """Write the campaign's report. Exit 0 whenever a report is written, whatever it says."""
    from mock_operator.conformance.render import FORMATS

    if format not in FORMATS:
        err.print(f"--format: one of {', '.join(FORMATS)}")
        raise typer.Exit(2)
    path = f"/_test/conformance/campaigns/{quote(campaign, safe='')}/report"
    text = _get(url, path, {"format": format})
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        err.print(f"{output}: {len(text.encode())} octets")


@conformance_app.command("close")
def conformance_close(
    campaign: Annotated[str, typer.Argument(help="The campaign's id")],
    url: Annotated[str, typer.Option(help="The running mock operator")] = DEFAULT_URL,
) -> None:
    """Close a campaign: nothing more is attributed to it."""
    _ask(url, f"/_test/conformance/campaigns/{quote(campaign, safe='')}/close", {})
    typer.echo(f"{campaign} close")


def _get(url: str, path: str, params: dict[str, str]) -> str:
    """GET from a test endpoint of the running mock; exit 1 saying why when it cannot."""
    try:
        response = httpx.get(f"{url.rstrip('/')}{path}", params=params, timeout=30)
    except httpx.HTTPError as exc:
        err.print(f"cannot reach the mock operator at {url}: {exc}. Is it running?")
        raise typer.Exit(1) from None
    if response.status_code != 200:
        is_json = response.headers.get("content-type", "").startswith("application/json")
        detail = response.json().get("detail") if is_json else response.text[:200]
        err.print(f"the mock operator refused: {detail}")
        raise typer.Exit(1)
    return response.text


PROBE_FORMATS = {".html": "html", ".htm": "html", ".xml": "junit", ".json": "json"}


@app.command()
def probe(
    persona: Annotated[
        str, typer.Option(help="Persona whose fresh tokens log in (dr-martin, sec-bernard, ...)")
    ],
    imap: Annotated[
        str | None, typer.Option(help="The server's IMAP port, HOST:PORT (STARTTLS)")
    ] = None,
    smtp: Annotated[
        str | None, typer.Option(help="The server's SMTP submission port, HOST:PORT (STARTTLS)")
    ] = None,
    bal: Annotated[
        str | None,
        typer.Option(help="BAL to open (default: the persona's own, else one delegated to them)"),
    ] = None,
    other_bal: Annotated[
        str | None,
        typer.Option(help="A BAL the persona may not open (default: another persona's)"),
    ] = None,
    url: Annotated[str, typer.Option(help="The running mock operator (tokens)")] = DEFAULT_URL,
    ca: Annotated[
        list[Path] | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Trust this CA (PEM) too; default: the demo's or the mock's development "
            "certificate found in the current directory",
        ),
    ] = None,
    host_name: Annotated[
        str | None, typer.Option(help="Name the server's certificate must carry (and SNI)")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Do not check the server's certificate")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, max=300, help="Seconds for each step (connect, reply, TLS)")
    ] = DEFAULT_STEP,
    report_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="html, junit or json: the report on stdout, or in --output "
            "(default: from its suffix, else json)",
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the report to this file")
    ] = None,
) -> None:
    """Check an API LPS server from the client's side: STARTTLS, XOAUTH2 and OAUTHBEARER,
    bad tokens and BAL refused as the RFCs say, capabilities, SMTP AUTH/SIZE/DSN, 5.7.1 for
    a sender not allowed. Exit 0 when no check failed ("not observed" is no failure), 1
    when one did, 2 on a usage error."""
    from mock_operator.conformance.render import FORMATS, render

    if imap is None and smtp is None:
        raise typer.BadParameter("give --imap HOST:PORT, --smtp HOST:PORT, or both")
    if report_format is not None and report_format not in FORMATS:
        raise typer.BadParameter(f"one of {', '.join(FORMATS)}", param_hint="--format")
    try:
        imap_at = Endpoint.parse(imap) if imap else None
        smtp_at = Endpoint.parse(smtp) if smtp else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    own, other = default_mailboxes(persona)
    bal, other_bal = bal or own, other_bal or other
    if bal is None or other_bal is None:
        raise typer.BadParameter(
            f"{persona!r} is not a default persona with a BAL: name them with --bal and --other-bal"
        )
    cafiles = tuple(ca) if ca else development_certificates(Path.cwd())
    policy = TlsPolicy(cafiles, insecure, host_name)
    target = ProbeTarget(imap_at, smtp_at, policy, timeout)

    async def fresh_token() -> str:
        answer = await asyncio.to_thread(_ask, url, "/_test/token", {"persona": persona})
        return str(answer["access_token"])

    async def run() -> Report:
        plan = await LoginPlan.prepare(persona, bal, other_bal, fresh_token)
        return await run_probe(target, plan)

    report = asyncio.run(run())
    if output is not None:
        chosen = report_format or PROBE_FORMATS.get(output.suffix.lower(), "json")
        output.write_text(render(report, chosen), encoding="utf-8")
    if report_format is not None and output is None:
        typer.echo(render(report, report_format), nl=False)
    else:
        _probe_table(report, Console(soft_wrap=True))
        if output is not None:
            typer.echo(f"rapport : {output}")
    if report.failed:
        raise typer.Exit(1)


def _probe_table(report: Report, console: Console) -> None:
    table = Table("statut", "exigence", "contrôle", "détail", title=report.title)
    style = {Status.PASSED: "green", Status.FAILED: "bold red", Status.NOT_OBSERVED: "dim"}
    for result in report.results:
        status = result.status
        table.add_row(
            f"[{style[status]}]{status.label}[/]",
            result.check.requirement,
            result.check.key,
            escape(result.detail),
        )
    console.print(table)
    console.print(
        f"{report.count(Status.PASSED)} réussi(s), {report.count(Status.FAILED)} échoué(s), "
        f"{report.count(Status.NOT_OBSERVED)} non observé(s)",
        highlight=False,
    )


@app.command()
def personas() -> None:
    """List the seeded personas: every value whole (folded on a narrow terminal, on one
    line when written to a pipe or a file, whatever COLUMNS says)."""
    table = Table("persona", "name", "idNat", "role", "own BAL", "platform")
    for column in table.columns:
        column.overflow = "fold"
    for p in default_personas():
        table.add_row(
            p.key, p.display_name, p.idnat, p.description, p.bal or "—", p.platform or "—"
        )
    console = Console(soft_wrap=True)
    if not console.is_terminal:  # as wide as the rows (a table takes no more than it needs)
        console = Console(soft_wrap=True, width=1000)
    console.print(table)


def main() -> None:
    app()
