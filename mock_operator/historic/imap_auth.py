"""Who may open which BAL on the historic platform's own IMAP, and with which rights.

The old platform knew nothing of Pro Santé Connect: its IMAP took a CPS card, and the
operator's tools logged in as the operator. So two ways in, and nothing else:

* the operator's master login: ``AUTHENTICATE PLAIN`` with authzid = the BAL, authcid and
  password = the mock's master credentials (the same as on the modern platform's IMAP
  and the web services' HTTP Basic: ``master_user``, password in ``master.secret``);
  all rights;
* a CPS card: the TLS client certificate (after STARTTLS; the listener trusts the mock's
  card CA only, so TLS already refused any other), then ``AUTHENTICATE EXTERNAL`` with
  authzid = the BAL, or empty for the holder's own BAL on this platform. The holder gets
  all rights; someone else the rights the delegation registry grants them on it.

Anything else is refused: AUTHENTICATIONFAILED for whoever the credentials do not prove
(a token, a wrong password, a certificate this platform did not issue), AUTHORIZATIONFAILED
for who may not open that BAL (unknown here, not theirs, nothing delegated).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from gateway.imap.session import ALL_RIGHTS, ExternalCredentials, SessionGrant
from gateway.runtime.login import AuthFailed, ConnectionInfo
from mock_operator.historic.auth import CpsAuthority
from mock_operator.historic.imap import HistoricImap
from mock_operator.modern.auth import MasterCredentials
from psc_auth.certificates import CardError
from psc_auth.sasl import Mechanism, TokenCredentials

log = logging.getLogger(__name__)

DelegatedRights = Callable[[str, str], Awaitable[tuple[frozenset[str], str] | None]]
"""(idNat, BAL) -> (rights, via) or None: the delegation registry's decision."""


class HistoricImapAuthenticator:
    """The engine's `Authenticator` (master login) and `ExternalAuthenticator` (CPS card)."""

    def __init__(
        self,
        imap: HistoricImap,
        *,
        master: MasterCredentials | None,
        authority: CpsAuthority | None,
        delegated: DelegatedRights | None = None,
    ) -> None:
        self.imap = imap
        self.master = master
        self.authority = authority
        self.delegated = delegated

    async def authenticate(
        self, credentials: TokenCredentials, connection: ConnectionInfo
    ) -> SessionGrant:
        master = self.master
        if (
            master is None
            or credentials.mechanism is not Mechanism.PLAIN
            or not master.matches(credentials.authcid, credentials.token)
        ):
            raise AuthFailed(
                "authentication",
                "this platform takes the operator's master login (PLAIN) or a CPS card (EXTERNAL)",
            )
        bal = credentials.user.lower()
        if bal == credentials.authcid.lower() or await self.imap.store.account(bal) is None:
            raise AuthFailed("authorization", "master login needs authzid = a BAL of this platform")
        log.info("mock.historic.master_login", extra={"bal": bal})
        return SessionGrant(self.imap.mailbox(bal), ALL_RIGHTS, master.user, via="master")

    async def authenticate_external(
        self, credentials: ExternalCredentials, connection: ConnectionInfo
    ) -> SessionGrant:
        idnat = self._card_holder(credentials.certificate)
        store = self.imap.store
        if credentials.authzid:
            bal = credentials.authzid.strip().lower()
        else:
            own = await store.accounts(idnat)
            if not own:
                raise AuthFailed("authorization", "no BAL of yours here: name one as authzid")
            bal = own[0].address
        account = await store.account(bal)
        if account is None:
            raise AuthFailed("authorization", f"no BAL {bal} on this platform")
        if account.holder_idnat == idnat:
            rights, via = ALL_RIGHTS, "holder"
        else:
            decision = await self.delegated(idnat, bal) if self.delegated else None
            if decision is None or not decision[0]:
                raise AuthFailed("authorization", f"{idnat} may not open {bal}")
            rights, via = decision
        log.info("mock.historic.card_login", extra={"bal": bal, "idnat": idnat, "via": via})
        return SessionGrant(self.imap.mailbox(bal), rights, idnat, via=via)

    def _card_holder(self, der: bytes) -> str:
        """The idNat of a CPS card this platform issued, valid now and not revoked. TLS
        checked the chain already; this says why a certificate is refused, and holds
        whatever the listener's TLS context trusts."""
        if self.authority is None:
            raise AuthFailed("authentication", "this platform takes no CPS card")
        try:
            return str(self.authority.verifier.verify(der).idnat)
        except CardError as exc:
            raise AuthFailed("authentication", f"CPS card refused ({exc.refusal.value})") from None
