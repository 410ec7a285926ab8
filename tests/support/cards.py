"""CPS cards for tests: issued by the mock's card CA (as `mock-operator card` does), as
files a client loads, and the gateway's `[cards]` settings pointing at that CA."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.runtime.files import write_private
from gateway.settings import CardSettings, Settings
from mock_operator.historic.auth import CpsAuthority
from mock_operator.server import MockOperator


@dataclass(frozen=True)
class Card:
    """A card as files: the certificate and its key (PEM)."""

    certificate: Path
    key: Path


def authority_of(mock: MockOperator) -> CpsAuthority:
    assert mock.historic_auth is not None
    assert mock.historic_auth.authority is not None
    return mock.historic_auth.authority


def card_settings(mock: MockOperator) -> CardSettings:
    """The gateway trusts the mock's card CA and reads its revocation list, as the demo."""
    authority = authority_of(mock)
    return CardSettings(ca_file=authority.certificate_path, crl_file=authority.crl_path)


def with_cards(
    configure: Callable[[Settings, MockOperator], None],
) -> Callable[[Settings, MockOperator], None]:
    """A stack `configure` that also sets `[cards]` to the mock's card CA."""

    def both(settings: Settings, mock: MockOperator) -> None:
        configure(settings, mock)
        settings.cards = card_settings(mock)

    return both


def issue_card(
    authority: CpsAuthority,
    mock: MockOperator,
    persona_key: str,
    directory: Path,
    *,
    lifetime: dt.timedelta = dt.timedelta(days=365),
    mailboxes: tuple[str, ...] = (),
    **change: Any,
) -> Card:
    """A card of `persona_key` issued by `authority` (`change` alters the persona)."""
    persona = mock.personas.get(persona_key)
    assert persona is not None
    if change:
        persona = dataclasses.replace(persona, **change)
    certificate, key = authority.issue(persona, lifetime=lifetime, mailboxes=mailboxes)
    directory.mkdir(parents=True, exist_ok=True)
    card = Card(directory / f"{persona_key}.pem", directory / f"{persona_key}-key.pem")
    card.certificate.write_bytes(certificate)
    write_private(card.key, key)
    return card


def tls_with_card(trusted: Path, card: Card | None) -> ssl.SSLContext:
    """A client context trusting the gateway's certificate `trusted`, holding `card`."""
    context = ssl.create_default_context(cafile=str(trusted))
    if card is not None:
        context.load_cert_chain(card.certificate, card.key)
    return context
