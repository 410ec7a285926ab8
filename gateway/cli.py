"""`lps-gateway`: the gateway's command line."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from gateway.lifecycle import run_until_signalled
from gateway.logs import configure_logging
from gateway.settings import Settings, load_settings

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
    """Run the gateway alone (every setting also from LPSGW_ environment variables)."""
    from gateway.server import Gateway

    settings = load_settings(config)
    configure_logging(settings.log)
    gateway = Gateway(settings)

    def announce() -> None:
        Console(soft_wrap=True).print(
            f"[bold]lps-gateway[/] listening on {gateway.http_url}", highlight=False
        )

    asyncio.run(run_until_signalled([gateway], announce))


@app.command()
def demo(
    data: Annotated[Path, typer.Option(help="Data directory")] = Path(".lps-gateway"),
    config: Annotated[Path | None, typer.Option(help="TOML configuration file")] = None,
) -> None:
    """Run the mock operator and the gateway in one process, on the default ports."""
    settings = load_settings(config, data_dir=data)
    configure_logging(settings.log)
    asyncio.run(_demo(settings))


async def _demo(settings: Settings) -> None:
    import dataclasses

    from delegation.seed import seed
    from gateway.server import Gateway
    from mock_operator.cli import describe
    from mock_operator.personas import default_personas
    from mock_operator.server import MockOperator

    gateway = Gateway(settings)
    registry = await gateway.open_registry()
    await seed(registry, [dataclasses.asdict(p) for p in default_personas()])
    mock = MockOperator(settings.mock, settings.data_dir / "mock-operator", registry=registry)
    console = Console(soft_wrap=True)

    class _Configured:
        """The gateway trusts the mock's PSC and logs its pages in as the mock's client."""

        async def start(self) -> None:
            assert mock.psc is not None
            client = mock.psc.clients.get(settings.ui.client_id)
            settings.psc.issuer = mock.issuer
            if client is not None:
                settings.ui.client_secret = client.client_secret
            await gateway.start()

        async def stop(self) -> None:
            await gateway.stop()

    def announce() -> None:
        console.rule("lps-gateway demo")
        describe(mock, console)
        console.print(f"[bold]lps-gateway[/] listening on {gateway.http_url}", highlight=False)
        console.print(
            f"  delegations page:         {gateway.http_url}/ui/delegations", highlight=False
        )
        console.print(
            f"  API:                      {gateway.http_url}/v1 (docs: /docs)", highlight=False
        )
        imap = f"imap://{mock.settings.host}:{mock.imap_port}/INBOX"
        console.print(
            "\n[yellow]At this stage the demo runs the mock operator and the gateway's HTTP API "
            "and pages only[/]; the gateway's API LPS front (IMAP 1143, SMTP 1587) arrives with "
            "the next issues. Delegations granted on the page are honoured by the mock's IMAP "
            "and SMTP.\nTry:\n"
            "  TOKEN=$(.venv/bin/mock-operator token dr-martin)\n"
            f'  curl --oauth2-bearer "$TOKEN" --user claire.martin@medecin.mssante.fr: {imap}\n'
            f'  curl -H "Authorization: Bearer $TOKEN" {gateway.http_url}/v1/mailboxes\n'
            "Ctrl-C stops the demo.",
            highlight=False,
        )

    await run_until_signalled([mock, _Configured()], announce)


def main() -> None:
    app()
