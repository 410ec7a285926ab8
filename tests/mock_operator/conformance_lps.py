"""A reference LPS for the conformance campaign tests: a small practice-software client that
does everything the runner checks the right way (PSC by CIBA and refresh, IMAP and SMTP
with STARTTLS, SASL XOAUTH2/OAUTHBEARER, ID, UID, BODY.PEEK, IDLE, LOGOUT, MSSanté headers,
read receipts, delegation, the end of the PSC session), one method per behaviour.

Its `Flaws` make it do one thing wrong at a time: the variants of the campaign tests. The
methods are blocking (imaplib, smtplib, httpx): the tests run them in a thread while the
mock operator serves on the test's event loop.
"""

from __future__ import annotations

import dataclasses
import email
import email.utils
import imaplib
import smtplib
import ssl
import threading
from collections.abc import Callable, Iterable
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr, make_msgid
from typing import Any

import httpx

from mock_operator.seed import cda_document
from mock_operator.server import MockOperator
from mock_operator.xdm import build_xdm
from tests.support.sasl import xoauth2_blob

NIL = "LPS-TEST-0001"
NAME, VERSION = "Mon LPS", "2.1"
CIBA_GRANT = "urn:openid:params:grant-type:ciba"
TIMEOUT = 30.0


class SessionEnded(Exception):
    """The PSC refused the refresh token (`invalid_grant`): the person must log in again."""


@dataclasses.dataclass(frozen=True)
class Flaws:
    """What the LPS does wrong; the defaults are the reference behaviour."""

    starttls: bool = True  # STARTTLS before authenticating (IMAP and SMTP)
    by_name: bool = True  # connect by host name ("localhost", SNI sent), not by 127.0.0.1
    mechanism: str = "XOAUTH2"  # or "OAUTHBEARER", "PLAIN", "LOGIN" (IMAP LOGIN command)
    id_fields: tuple[tuple[str, str], ...] | None = (("name", NAME), ("version", VERSION))
    uid: bool = True  # UID FETCH/SEARCH/STORE, not sequence numbers
    peek: bool = True  # BODY.PEEK[], not BODY[]
    logout: bool = True  # LOGOUT / QUIT, not a bare close


class ReferenceLps:
    """One person's LPS: their PSC tokens, and the IMAP and SMTP sessions opened with them."""

    def __init__(
        self,
        mock: MockOperator,
        *,
        client_id: str,
        idnat: str,
        bal: str,
        flaws: Flaws = Flaws(),
    ) -> None:
        assert mock.psc is not None
        assert mock.tls_cert is not None
        client = mock.psc.clients.get(client_id)
        assert client is not None, client_id
        self.mock = mock
        self.client_id = client_id
        self.secret = client.client_secret
        self.idnat = idnat
        self.bal = bal
        self.flaws = flaws
        self.access_token = ""
        self.refresh_token = ""
        self.imap: imaplib.IMAP4 | None = None
        self.smtp: smtplib.SMTP | None = None
        self.seen_uids: set[int] = set()
        self.idling = threading.Event()

    # -- PSC -------------------------------------------------------------------------------

    def _oidc(self, path: str, data: dict[str, str]) -> httpx.Response:
        with httpx.Client(timeout=TIMEOUT, auth=(self.client_id, self.secret)) as http:
            return http.post(f"{self.mock.issuer}/protocol/openid-connect/{path}", data=data)

    def psc_login(self) -> None:
        """CIBA: the person approves on their phone (auto-approved by the test mock)."""
        started = self._oidc(
            "ext/ciba/auth",
            {"scope": "openid scope_all", "login_hint": self.idnat, "channel": "MOBILE"},
        )
        started.raise_for_status()
        answer = self._oidc(
            "token", {"grant_type": CIBA_GRANT, "auth_req_id": started.json()["auth_req_id"]}
        )
        answer.raise_for_status()
        self._keep(answer.json())

    def refresh(self) -> None:
        """A refresh before the access token expires; on `invalid_grant` the PSC session is
        over: the LPS closes its mail sessions at once (ECO.1.2.6) and says so."""
        answer = self._oidc(
            "token", {"grant_type": "refresh_token", "refresh_token": self.refresh_token}
        )
        if answer.status_code == 400 and answer.json().get("error") == "invalid_grant":
            self.close_sessions()
            raise SessionEnded(answer.json().get("error_description", ""))
        answer.raise_for_status()
        self._keep(answer.json())

    def _keep(self, tokens: dict[str, Any]) -> None:
        self.access_token = tokens["access_token"]
        self.refresh_token = tokens.get("refresh_token", self.refresh_token)

    # -- IMAP ------------------------------------------------------------------------------

    def _tls(self) -> ssl.SSLContext:
        assert self.mock.tls_cert is not None
        context = ssl.create_default_context(cafile=str(self.mock.tls_cert))
        if not self.flaws.by_name:
            context.check_hostname = False  # by IP: no name to check, none sent (no SNI)
        return context

    @property
    def host(self) -> str:
        return "localhost" if self.flaws.by_name else "127.0.0.1"

    def imap_open(self, bal: str | None = None, *, mechanism: str | None = None) -> imaplib.IMAP4:
        """Connect, STARTTLS, ID, then authenticate with the access token for `bal` (the
        person's own by default; a delegated BAL is named in the SASL user)."""
        user = bal or self.bal
        client = imaplib.IMAP4(self.host, self.mock.imap_port, timeout=TIMEOUT)
        if self.flaws.starttls:
            client.starttls(self._tls())
        if self.flaws.id_fields is not None:
            fields = " ".join(f'"{k}" "{v}"' for k, v in self.flaws.id_fields)
            client.xatom("ID", f"({fields})")
        mechanism = mechanism or self.flaws.mechanism
        token = self.access_token
        if mechanism == "XOAUTH2":
            client.authenticate("XOAUTH2", lambda _: xoauth2_blob(user, token))
        elif mechanism == "OAUTHBEARER":
            blob = f"n,a={user},\x01auth=Bearer {token}\x01\x01".encode()
            client.authenticate("OAUTHBEARER", lambda _: blob)
        elif mechanism == "PLAIN":
            client.authenticate("PLAIN", lambda _: f"\x00{user}\x00{token}".encode())
        else:
            client.login(user, token)
        self.imap = client
        return client

    def _client(self) -> imaplib.IMAP4:
        assert self.imap is not None, "no IMAP session"
        return self.imap

    def select(self) -> int:
        _, data = self._client().select("INBOX")
        return int(data[0] or 0)

    def new_uids(self) -> list[int]:
        client = self._client()
        if self.flaws.uid:
            _, data = client.uid("SEARCH", "ALL")
        else:
            _, data = client.search(None, "ALL")
        found = [int(n) for n in (data[0] or b"").split()]
        return [n for n in found if n not in self.seen_uids]

    def fetch(self, uids: Iterable[int]) -> dict[int, Message]:
        """The messages' content, read without marking them \\Seen (BODY.PEEK)."""
        wanted = sorted(uids)
        if not wanted:
            return {}
        client = self._client()
        item = "BODY.PEEK[]" if self.flaws.peek else "BODY[]"
        numbers = ",".join(str(n) for n in wanted)
        if self.flaws.uid:
            _, data = client.uid("FETCH", numbers, f"(UID {item})")
        else:
            _, data = client.fetch(numbers, f"(UID {item})")
        found: dict[int, Message] = {}
        for part in data:
            if not isinstance(part, tuple):
                continue
            head = part[0].decode()
            uid = int(head.split("UID ", 1)[1].split()[0].rstrip(")"))
            found[uid] = email.message_from_bytes(part[1])
        self.seen_uids.update(found)
        return found

    def sizes(self, uids: Iterable[int]) -> dict[int, int]:
        """RFC822.SIZE of each message, to leave large ones for later."""
        numbers = ",".join(str(n) for n in sorted(uids))
        if not numbers:
            return {}
        _, data = self._client().uid("FETCH", numbers, "(UID RFC822.SIZE)")
        found = {}
        for line in data:
            text = line.decode() if isinstance(line, bytes) else ""
            if "RFC822.SIZE" in text:
                found[int(text.split("UID ", 1)[1].split()[0])] = int(
                    text.split("RFC822.SIZE ", 1)[1].split()[0].rstrip(")")
                )
        return found

    def sync_inbox(self) -> dict[int, Message]:
        """SELECT, then fetch what is new."""
        self.select()
        return self.fetch(self.new_uids())

    def idle_for_new(self) -> dict[int, Message]:
        """IDLE (RFC 2177) until the server announces a new message, then fetch it."""
        self.idle_until_exists()
        return self.fetch(self.new_uids())

    def idle_until_exists(self) -> None:
        """IDLE until an EXISTS, then DONE. imaplib has no IDLE before Python 3.14: it is
        spoken on imaplib's connection directly."""
        client = self._client()
        tag = client._new_tag()
        client.send(tag + b" IDLE\r\n")
        assert client.readline().startswith(b"+"), "IDLE refused"
        self.idling.set()
        try:
            while not client.readline().rstrip().endswith(b"EXISTS"):
                pass
        finally:
            self.idling.clear()
        client.send(b"DONE\r\n")
        while not client.readline().startswith(tag):
            pass

    def poll(self, times: int) -> None:
        """The flawed alternative to IDLE: NOOP again and again."""
        for _ in range(times):
            self._client().noop()

    def mark_seen(self, uid: int) -> None:
        if self.flaws.uid:
            self._client().uid("STORE", str(uid), "+FLAGS", "(\\Seen)")
        else:
            self._client().store(str(uid), "+FLAGS", "(\\Seen)")

    def imap_close(self) -> None:
        client, self.imap = self.imap, None
        if client is None:
            return
        if self.flaws.logout:
            client.logout()
        else:
            client.shutdown()

    # -- SMTP ------------------------------------------------------------------------------

    def smtp_open(self, bal: str | None = None) -> smtplib.SMTP:
        user = bal or self.bal
        smtp = smtplib.SMTP(self.host, self.mock.smtp_port, timeout=TIMEOUT)
        smtp.ehlo("mon-lps.example")
        if self.flaws.starttls:
            smtp.starttls(context=self._tls())
            smtp.ehlo("mon-lps.example")
        token = self.access_token
        smtp.auth(
            "XOAUTH2",
            lambda challenge=None: xoauth2_blob(user, token).decode(),
            initial_response_ok=True,
        )
        self.smtp = smtp
        return smtp

    def send(
        self,
        message: Message | bytes,
        *,
        sender: str | None = None,
        to: str = "",
        receipt: bool = False,
    ) -> None:
        """Submit `message`; with `receipt`, ask for a delivery status notification
        (RFC 3461: NOTIFY, RET, ENVID) when the server advertises DSN, as a client must."""
        smtp = self.smtp
        assert smtp is not None, "no SMTP session"
        mail_options: list[str] = []
        rcpt_options: list[str] = []
        if receipt and smtp.has_extn("dsn"):
            mail_options = ["RET=HDRS", f"ENVID={make_msgid()[1:-1].split('@')[0]}"]
            rcpt_options = ["NOTIFY=SUCCESS,FAILURE"]
        if isinstance(message, bytes):
            smtp.sendmail(sender or self.bal, [to], message, mail_options, rcpt_options)
        else:
            smtp.send_message(
                message,
                from_addr=sender or self.bal,
                mail_options=mail_options,
                rcpt_options=rcpt_options,
            )

    def smtp_close(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is None:
            return
        if self.flaws.logout:
            smtp.quit()
        else:
            smtp.close()

    def close_sessions(self) -> None:
        """What the LPS does when the PSC session is over: LOGOUT and QUIT at once."""
        self.imap_close()
        self.smtp_close()

    def reopen_sessions(self) -> None:
        self.imap_open()
        self.smtp_open()

    # -- messages --------------------------------------------------------------------------

    def headers(self, message: Message, to: str, subject: str) -> None:
        message["From"] = formataddr(("Dr Claire MARTIN", self.bal))
        message["To"] = formataddr(("Dr Ève MOREAU", to))
        message["Subject"] = subject
        message["Date"] = format_datetime(email.utils.localtime())
        message["Message-ID"] = make_msgid(domain=self.bal.rpartition("@")[2])
        message["X-MSS-NIL"] = NIL

    def xdm_report(
        self,
        to: str,
        *,
        from_bal: str | None = None,
        subject: str | None = None,
        archive: Callable[[bytes], bytes] = lambda archive: archive,
    ) -> EmailMessage:
        """A report with its CDA in an IHE_XDM.ZIP, the X-MSS headers it calls for, the
        XDM subject (ECO.2.1.3) and a read receipt asked of the recipient."""
        built = build_xdm(cda_document())
        message = EmailMessage()
        self.headers(message, to, subject or built.subject)
        if from_bal is not None:
            del message["From"]
            message["From"] = from_bal
        message["Disposition-Notification-To"] = from_bal or self.bal
        for name, value in built.headers():
            message[name] = value
        message.set_content("Compte rendu ci-joint, pour Hélène.\n")
        message.add_attachment(
            archive(built.archive), maintype="application", subtype="zip", filename="IHE_XDM.ZIP"
        )
        return message

    def note(self, to: str, subject: str = "Rendez-vous de contrôle — été") -> EmailMessage:
        message = EmailMessage()
        self.headers(message, to, subject)
        message.set_content("Bonjour, à bientôt.\n")
        return message

    def reply(self, original: Message) -> EmailMessage:
        """A reply (RFC 5322 §3.6.4): In-Reply-To the original, References ending with it."""
        message = EmailMessage()
        original_id = "".join(str(original["Message-ID"]).split())
        to = email.utils.parseaddr(str(original["From"]))[1]
        self.headers(message, to, f"Re: {decoded(original['Subject'])}")
        message["In-Reply-To"] = original_id
        earlier = str(original.get("References") or "").split()
        message["References"] = " ".join([*earlier, original_id])
        message.set_content("Bien reçu, merci.\n")
        return message

    def mdn(
        self,
        original: Message,
        *,
        from_bal: str | None = None,
        disposition: str | None = "manual-action/MDN-sent-manually; displayed",
    ) -> MIMEMultipart:
        """A read receipt as RFC 8098 writes it: multipart/report, a human part, the fields,
        to the address the original named in Disposition-Notification-To."""
        bal = from_bal or self.bal
        report = MIMEMultipart("report", report_type="disposition-notification")
        report["From"] = bal
        report["To"] = str(original["Disposition-Notification-To"])
        report["Subject"] = "Accusé de lecture"
        report["Date"] = format_datetime(email.utils.localtime())
        report["Message-ID"] = make_msgid(domain=bal.rpartition("@")[2])
        report["X-MSS-NIL"] = NIL
        report.attach(MIMEText("Votre message a été lu.\n", "plain", "utf-8"))
        original_id = "".join(str(original["Message-ID"]).split())
        fields = MIMEBase("message", "disposition-notification")
        fields.set_payload(
            f"Reporting-UA: mon-lps.example; {NAME} {VERSION}\r\n"
            f"Final-Recipient: rfc822;{bal}\r\n"
            f"Original-Message-ID: {original_id}\r\n"
            + (f"Disposition: {disposition}\r\n" if disposition else "")
        )
        report.attach(fields)
        return report


def decoded(value: object) -> str:
    """A header's text, RFC 2047 words decoded."""
    return str(email.header.make_header(email.header.decode_header(str(value or ""))))


def raw_message(message: Message) -> bytes:
    return message.as_bytes(policy=email.policy.SMTP)


def broken_zip(archive: bytes) -> bytes:
    """The archive cut short: no zip reader can open it."""
    return archive[: len(archive) // 2]
