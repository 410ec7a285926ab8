"""`lps-gateway`: the gateway's command line."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from gateway.lifecycle import run_until_signalled
from gateway.logs import configure_logging
from gateway.settings import load_settings

app = typer.Typer(
    help="API LPS gateway for MSSanté: Pro Santé Connect, delegation, historic web services.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _commands() -> None:
    """API LPS gateway for MSSanté (run a command: demo, ...)."""


@app.command()
def demo(
    data: Annotated[Path, typer.Option(help="Data directory")] = Path(".lps-gateway"),
    config: Annotated[Path | None, typer.Option(help="TOML configuration file")] = None,
) -> None:
    """Run the mock operator and the gateway in one process, on the default ports."""
    from mock_operator.cli import describe
    from mock_operator.server import MockOperator

    settings = load_settings(config, data_dir=data)
    configure_logging(settings.log)
    mock = MockOperator(settings.mock, settings.data_dir / "mock-operator")
    console = Console(soft_wrap=True)

    def announce() -> None:
        console.rule("lps-gateway demo")
        describe(mock, console)
        imap = f"imap://{mock.settings.host}:{mock.imap_port}/INBOX"
        console.print(
            "\n[yellow]At this stage the demo runs the mock operator only[/] (mock Pro Santé "
            "Connect and the modern platform's IMAP and SMTP); the gateway's API LPS front "
            "arrives with the next issues.\nTry:\n"
            "  TOKEN=$(.venv/bin/mock-operator token dr-martin)\n"
            f'  curl --oauth2-bearer "$TOKEN" --user claire.martin@medecin.mssante.fr: {imap}\n'
            "Ctrl-C stops the demo.",
            highlight=False,
        )

    asyncio.run(run_until_signalled([mock], announce))


def main() -> None:
    app()
