"""The gateway's HTTP listener under attack, over real sockets against a whole gateway (as
`lps-gateway serve` wires it): request bodies capped before they are read, a brand-new
session at every Pro Santé Connect login with cookies a script cannot read, and hostile
input answered (422 problem on /v1, a French page on /ui), never crashed on."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import update

from delegation.models import DelegationRow
from gateway.settings import MockSettings
from gateway.web.sessions import COOKIE
from tests.conftest import client_tls
from tests.support.stacks import Stack, gateway_settings, running_stack

MAX_BODY = 4096
MARTIN = "claire.martin@medecin.mssante.fr"
MOREAU = "899700000007"
DURAND = "899700000004"
PUBLIC_HTTPS = "https://passerelle.example.test"
SECRET = "web-client-secret"
PROBLEM = "application/problem+json"
# the test tokens' client, and the gateway's own: the pages' login validates its token too
AUDIENCES = ["lps-demo", "lps-gateway"]


def register_gateway_client(mock_dir: Path) -> None:
    """The mock PSC's clients, written before it starts: the gateway's pages may come back
    on loopback or on the https public URL; `lps-demo` is the one test tokens are for."""
    mock_dir.mkdir(parents=True, exist_ok=True)
    (mock_dir / "clients.toml").write_text(
        f"""[[client]]
client_id = "lps-gateway"
client_secret = "{SECRET}"
redirect_uris = ["http://127.0.0.1:8080/ui/callback", "{PUBLIC_HTTPS}/ui/callback"]
grant_types = ["authorization_code", "refresh_token"]

[[client]]
client_id = "lps-demo"
client_secret = "lps-demo-secret"
redirect_uris = ["http://127.0.0.1/callback"]
""",
        encoding="utf-8",
    )


REQUEST_TIMEOUT = 2.0  # seconds a client may take to send a whole request, here


@dataclass
class Site:
    stack: Stack

    @property
    def base(self) -> str:
        """The listener itself, whatever public URL the gateway announces."""
        return f"http://127.0.0.1:{self.stack.gateway.http_port}"


@pytest.fixture
async def site(tmp_path: Path, mock_settings: MockSettings) -> AsyncIterator[Site]:
    register_gateway_client(tmp_path / "mock")
    settings = gateway_settings(
        tmp_path / "gateway",
        http={"max_body": MAX_BODY, "request_timeout": REQUEST_TIMEOUT},
        ui={"client_secret": SECRET},
        psc={"client_ids": AUDIENCES},
    )
    async with running_stack(settings, mock_settings, tmp_path / "mock") as stack:
        yield Site(stack)


@pytest.fixture
async def behind_tls(tmp_path: Path, mock_settings: MockSettings) -> AsyncIterator[Site]:
    """A gateway whose public URL is https, its listener plain http: a TLS-terminating
    proxy in front, as in production."""
    register_gateway_client(tmp_path / "mock")
    settings = gateway_settings(
        tmp_path / "gateway",
        http={"public_url": PUBLIC_HTTPS},
        ui={"client_secret": SECRET},
        psc={"client_ids": AUDIENCES},
    )
    async with running_stack(settings, mock_settings, tmp_path / "mock") as stack:
        yield Site(stack)


# -- a browser, with its cookies in the test's hands -----------------------------------------


class Browser:
    """httpx with no cookie jar of its own: what the server sets is read from Set-Cookie, what
    is sent is said explicitly, so a planted or stale cookie is exactly the one meant."""

    def __init__(self) -> None:
        self.http = httpx.AsyncClient(timeout=10, verify=client_tls())

    async def request(
        self, method: str, url: str, cookie: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if cookie is not None:
            headers["Cookie"] = f"{COOKIE}={cookie}"
        try:
            return await self.http.request(method, url, headers=headers, **kwargs)
        finally:
            self.http.cookies.clear()

    async def aclose(self) -> None:
        await self.http.aclose()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    value = Browser()
    try:
        yield value
    finally:
        await value.aclose()


def session_cookie(response: httpx.Response) -> SimpleCookie:
    cookies: SimpleCookie = SimpleCookie()
    cookies.load(response.headers["set-cookie"])
    assert COOKIE in cookies, response.headers["set-cookie"]
    return cookies


def session_id(response: httpx.Response) -> str:
    return session_cookie(response)[COOKIE].value


@dataclass
class Login:
    started: httpx.Response  # /ui/login
    finished: httpx.Response  # /ui/callback

    @property
    def prelogin_id(self) -> str:
        return session_id(self.started)

    @property
    def session_id(self) -> str:
        return session_id(self.finished)


async def log_in(
    browser: Browser, site: Site, cookie: str | None = None, persona: str = "dr-martin"
) -> Login:
    """Log in through the mock PSC's login form, as Chromium does in test_ui, starting with
    `cookie` (a planted or an older session id)."""
    started = await browser.request("GET", f"{site.base}/ui/login", cookie)
    assert started.status_code == 303, started.text
    form = await browser.request("GET", started.headers["location"])
    found = re.search(r'name="login_id" value="([^"]+)"', form.text)
    assert found, form.text
    back = await browser.request(
        "POST", str(form.url), data={"login_id": found[1], "persona": persona, "means": "card"}
    )
    assert back.status_code == 302, back.text
    # the PSC sends the browser to the public URL; the proxy hands the request to the listener
    target = urlsplit(back.headers["location"])
    finished = await browser.request(
        "GET", f"{site.base}{target.path}?{target.query}", session_id(started)
    )
    assert finished.status_code == 303, finished.text
    assert finished.headers["location"] == "/ui/delegations"
    return Login(started, finished)


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found[1]


async def is_logged_in(browser: Browser, site: Site, cookie: str) -> bool:
    answer = await browser.request("GET", f"{site.base}/ui/delegations", cookie)
    assert answer.status_code in (200, 303), answer.text
    return answer.status_code == 200


# -- web sessions --------------------------------------------------------------------------


async def test_login_never_adopts_a_session_id_from_the_request(site: Site, browser: Browser):
    # The attacker gets a genuine pre-login session id and plants it in the victim's browser.
    attacker = session_id(await browser.request("GET", f"{site.base}/ui/login"))
    victim = await log_in(browser, site, cookie=attacker)
    assert victim.prelogin_id != attacker, "/ui/login started a session of its own"
    assert victim.session_id not in (attacker, victim.prelogin_id), "login issued a new id"
    assert await is_logged_in(browser, site, victim.session_id)
    assert not await is_logged_in(browser, site, attacker), "the planted id is not logged in"
    assert not await is_logged_in(browser, site, victim.prelogin_id), "pre-login id dropped"
    # An id the server never issued is not adopted either.
    invented = await log_in(browser, site, cookie="chosen-by-the-attacker")
    assert "chosen-by-the-attacker" not in (invented.prelogin_id, invented.session_id)


async def test_login_issues_a_new_csrf_token(site: Site, browser: Browser):
    first = await log_in(browser, site)
    page = await browser.request("GET", f"{site.base}/ui/delegations", first.session_id)
    old_csrf = csrf_of(page)
    again = await log_in(browser, site, cookie=first.session_id)  # logging in once more
    assert again.session_id != first.session_id
    page = await browser.request("GET", f"{site.base}/ui/delegations", again.session_id)
    assert csrf_of(page) != old_csrf
    # the old token does not work on the new session: the logout is ignored
    await browser.request(
        "POST", f"{site.base}/ui/logout", again.session_id, data={"csrf": old_csrf}
    )
    assert await is_logged_in(browser, site, again.session_id)


async def test_cookies_are_httponly_lax_and_scoped(site: Site, browser: Browser):
    login = await log_in(browser, site)
    for response in (login.started, login.finished):
        cookie = session_cookie(response)[COOKIE]
        assert cookie["httponly"] is True
        assert cookie["samesite"].lower() == "lax"
        assert cookie["path"] == "/ui"
        assert not cookie["secure"], "plain http public URL: a Secure cookie would be lost"


async def test_cookies_are_secure_behind_a_tls_proxy(behind_tls: Site, browser: Browser):
    login = await log_in(browser, behind_tls)
    for response in (login.started, login.finished):
        cookie = session_cookie(response)[COOKIE]
        assert cookie["secure"] is True, response.headers["set-cookie"]
        assert cookie["httponly"] is True
        assert cookie["samesite"].lower() == "lax"
    assert await is_logged_in(browser, behind_tls, login.session_id)


# -- request bodies ------------------------------------------------------------------------


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


async def raw_exchange(port: int, *parts: bytes) -> RawAnswer:
    """Send `parts` on a fresh connection, then read until the server closes it (within 5 s:
    a server still waiting for the body never answers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for part in parts:
            writer.write(part)
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return RawAnswer(int(status_line.split()[1]), headers, body)


def request_head(path: str, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: gateway", *headers, "", ""]
    return "\r\n".join(lines).encode()


async def test_a_declared_body_over_the_cap_is_refused_unread(site: Site):
    token = await site.stack.token("dr-martin")
    port = site.stack.gateway.http_port
    api = f"/v1/mailboxes/{MARTIN}/delegations"
    # A gigabyte announced, twelve bytes sent: the answer comes without the body.
    answer = await raw_exchange(
        port,
        request_head(
            api,
            f"Authorization: Bearer {token}",
            "Content-Type: application/json",
            "Content-Length: 1000000000",
        ),
        b'{"delegate":',
    )
    assert answer.status == 413
    assert answer.headers["content-type"] == PROBLEM
    assert answer.headers["connection"] == "close"
    problem = json.loads(answer.body)
    assert problem["status"] == 413
    assert str(MAX_BODY) in problem["detail"]
    # One byte over, with Expect: 100-continue: refused before the client is asked for it.
    answer = await raw_exchange(
        port,
        request_head(
            api,
            f"Authorization: Bearer {token}",
            "Content-Type: application/json",
            f"Content-Length: {MAX_BODY + 1}",
            "Expect: 100-continue",
        ),
    )
    assert answer.status == 413, "no 100 Continue first"
    # The pages' forms too, in French.
    answer = await raw_exchange(
        port,
        request_head(
            "/ui/delegations/grant",
            "Content-Type: application/x-www-form-urlencoded",
            "Content-Length: 1000000000",
        ),
        b"csrf=",
    )
    assert answer.status == 413
    assert "trop volumineuse" in answer.body.decode()


async def test_a_chunked_body_is_cut_at_the_cap(site: Site):
    token = await site.stack.token("dr-martin")
    chunk = b"3e8\r\n" + b" " * 1000 + b"\r\n"
    # Five chunks of 1000 bytes pass the 4096-byte cap; the body never ends, yet the answer
    # comes: the server stopped at the cap instead of waiting for the rest.
    answer = await raw_exchange(
        site.stack.gateway.http_port,
        request_head(
            f"/v1/mailboxes/{MARTIN}/delegations",
            f"Authorization: Bearer {token}",
            "Content-Type: application/json",
            "Transfer-Encoding: chunked",
        ),
        *[chunk] * 5,
    )
    assert answer.status == 413
    assert answer.headers["content-type"] == PROBLEM
    assert answer.headers["connection"] == "close"


async def test_a_body_up_to_the_cap_is_served(site: Site):
    token = await site.stack.token("dr-martin")
    url = f"{site.base}/v1/mailboxes/{MARTIN}/delegations"
    grant = json.dumps({"delegate": MOREAU, "rights": ["read"]}).encode()
    exactly = grant + b" " * (MAX_BODY - len(grant))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def in_chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(exactly), 1000):
            yield exactly[start : start + 1000]

    async with httpx.AsyncClient(timeout=10, headers=headers) as http:
        declared = await http.post(url, content=exactly)
        assert declared.status_code == 201, declared.text
        chunked = await http.post(url, content=in_chunks())
        assert chunked.status_code == 201, chunked.text
        assert chunked.request.headers["transfer-encoding"] == "chunked"


# -- hostile input -------------------------------------------------------------------------


def far(days: int) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).isoformat()


async def test_hostile_input_is_answered_never_crashed_on(
    site: Site, browser: Browser, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING)
    token = await site.stack.token("dr-martin")
    delegations = f"/v1/mailboxes/{MARTIN}/delegations"

    def grant(expires_at: object = None, **body: object) -> dict[str, object]:
        return {"json": {"delegate": MOREAU, "rights": ["read"], "expires_at": expires_at, **body}}

    # (method, path, request arguments, expected status) on /v1: out-of-range is a 422 problem
    api: list[tuple[str, str, dict[str, Any], int]] = [
        ("POST", delegations, grant("9999-12-31T23:59:59+00:00"), 422),
        ("POST", delegations, grant("9999-12-31T23:59:59-05:00"), 422),  # overflows in UTC
        ("POST", delegations, grant("0001-01-01T00:00:00+01:00"), 422),  # idem, backwards
        ("POST", delegations, grant(far(3651)), 422),
        ("POST", delegations, grant("2030-01-01T00:00:00"), 422),  # no time zone
        ("POST", delegations, grant(1e20), 422),
        ("POST", delegations, grant(-1e20), 422),
        ("POST", delegations, grant("demain"), 422),
        ("POST", delegations, grant(delegate="9" * 3000), 422),
        ("POST", delegations, {"content": b'{"delegate": "\\ud800", "rights": ["read"]}'}, 422),
        ("POST", delegations, grant(rights=["read"] * 300), 422),
        ("POST", delegations, {"json": [[[[]]]]}, 422),
        ("POST", delegations, {"content": b"\xff\xfe{not json"}, 422),
        ("POST", delegations, {"content": b"[" * 3000}, 422),
        ("DELETE", f"{delegations}/{2**31}", {}, 422),
        ("DELETE", f"{delegations}/{2**63}", {}, 422),
        ("DELETE", f"{delegations}/{'9' * 5000}", {}, 422),
        ("DELETE", f"{delegations}/-1", {}, 422),
        ("DELETE", f"{delegations}/1e3", {}, 422),
        ("GET", f"/v1/mailboxes/{'a' * 300}@x.fr/delegations", {}, 422),
        ("GET", "/v1/mailboxes/a%00b@x.fr/delegations", {}, 422),
        ("GET", "/v1/mailboxes/%FF%FE@x.fr/delegations", {}, 404),
        ("GET", "/v1/directory", {"params": {"q": "a" * 65}}, 422),
        ("GET", "/v1/directory", {"params": {"q": "a" * 8000}}, 422),
        ("GET", "/v1/directory", {"params": {"q": "\x00\x00\x00"}}, 422),
        ("GET", "/v1/directory", {"params": {"q": "!!!"}}, 422),
        ("GET", "/v1/directory", {"params": [("q", "ab"), ("q", "bernard")]}, 200),
        ("GET", "/v1/directory", {}, 422),
        ("GET", "/v1/mailboxes", {"params": {"x" * 100: "y" * 10_000}}, 200),
        ("GET", "/v1/me", {"headers": {"Authorization": "Bearer " + "a" * 12_000}}, 401),
    ]
    async with httpx.AsyncClient(
        base_url=site.base, timeout=10, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        for method, path, kwargs, expected in api:
            answer = await http.request(method, path, **kwargs)
            assert answer.status_code == expected, (method, path[:80], kwargs, answer.text)
            if expected >= 400:
                assert answer.headers["content-type"] == PROBLEM, answer.text
        too_far = await http.post(delegations, **grant(far(4000)))
        assert "10 years" in too_far.json()["detail"]

    login = await log_in(browser, site)
    cookie = login.session_id
    page = await browser.request("GET", f"{site.base}/ui/delegations", cookie)
    csrf = csrf_of(page)
    form = {"csrf": csrf, "mailbox": MARTIN, "delegate": DURAND, "rights": "read"}
    # (method, path, request arguments, expected status, French text) on /ui: a page
    ui: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("GET", "/ui/delegations", {"params": {"q": "a" * 65}}, 200, "au plus 64"),
        ("GET", "/ui/delegations", {"params": {"q": "a" * 8000}}, 200, "au plus 64"),
        ("GET", "/ui/delegations", {"params": {"q": "!!!"}}, 200, "lettres ou chiffres"),
        ("GET", "/ui/delegations", {"params": {"q": "\ufffd\ufffd\ufffd"}}, 200, "lettres"),
        ("GET", "/ui/delegations", {"params": [("q", "a"), ("q", "durand")]}, 200, "DURAND"),
        ("POST", "/ui/delegations/grant", {"data": {**form, "expires_on": "0001-01-01"}}, 303, ""),
        ("POST", "/ui/delegations/grant", {"data": {**form, "expires_on": "9999-12-31"}}, 303, ""),
        ("POST", "/ui/delegations/grant", {"data": {**form, "expires_on": "2030-02-30"}}, 303, ""),
        ("POST", "/ui/delegations/grant", {"data": {**form, "rights": []}}, 303, ""),
        ("POST", "/ui/delegations/grant", {"data": {**form, "expires_on": "x" * 11}}, 400, ""),
        ("POST", "/ui/delegations/grant", {"data": {**form, "rights": ["read"] * 4}}, 400, ""),
        ("POST", "/ui/delegations/grant", {"data": {**form, "delegate": "9" * 40}}, 400, ""),
        ("POST", "/ui/delegations/grant", {"data": {**form, "mailbox": "a\x00@x.fr"}}, 400, ""),
        (
            "POST",
            "/ui/delegations/grant",
            {
                "content": f"csrf={csrf}&mailbox=\xff\xfe&delegate={DURAND}&rights=read".encode(
                    "latin-1"
                ),
                "headers": {"Content-Type": "application/x-www-form-urlencoded"},
            },
            303,
            "",
        ),
        (
            "POST",
            "/ui/delegations/grant",
            {
                "content": b"--x\r\nnot a part\r\n--x--",
                "headers": {"Content-Type": "multipart/form-data; boundary=x"},
            },
            400,
            "Requête invalide",
        ),
        ("POST", "/ui/delegations/grant", {"data": {"csrf": csrf}}, 400, "Requête invalide"),
        (
            "POST",
            "/ui/delegations/revoke",
            {"data": {"csrf": csrf, "mailbox": MARTIN, "delegation_id": str(2**40)}},
            400,
            "Requête invalide",
        ),
        (
            "POST",
            "/ui/delegations/revoke",
            {"data": {"csrf": csrf, "mailbox": MARTIN, "delegation_id": "abc"}},
            400,
            "Requête invalide",
        ),
        ("POST", "/ui/logout", {}, 400, "Requête invalide"),
        ("GET", "/ui/callback", {"params": {"state": "s" * 300, "code": "c"}}, 400, ""),
        ("GET", "/ui/callback", {"params": {"state": "s", "code": "c"}}, 400, "inconnue"),
        ("GET", "/ui/nowhere", {}, 404, "Page introuvable"),
        ("PUT", "/ui/delegations", {}, 405, ""),
    ]
    for method, path, kwargs, expected, text in ui:
        answer = await browser.request(method, f"{site.base}{path}", cookie, **kwargs)
        assert answer.status_code == expected, (method, path, kwargs, answer.text[:300])
        if expected != 303:
            assert answer.headers["content-type"].startswith("text/html"), answer.text
            assert text in answer.text, (path, kwargs, answer.text)
    flash = await browser.request("GET", f"{site.base}/ui/delegations", cookie)
    assert flash.status_code == 200

    crashes = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert not crashes, [r.getMessage() for r in crashes]


async def test_a_flash_names_the_expiry_refused(site: Site, browser: Browser):
    cookie = (await log_in(browser, site)).session_id
    csrf = csrf_of(await browser.request("GET", f"{site.base}/ui/delegations", cookie))
    form = {"csrf": csrf, "mailbox": MARTIN, "delegate": DURAND, "rights": "read"}
    for day in ("0001-01-01", "9999-12-31"):
        done = await browser.request(
            "POST", f"{site.base}/ui/delegations/grant", cookie, data={**form, "expires_on": day}
        )
        assert done.status_code == 303
        page = await browser.request("GET", f"{site.base}/ui/delegations", cookie)
        assert "Date d&#39;expiration invalide" in page.text, day


async def test_the_page_shows_an_expiry_at_the_end_of_the_calendar(site: Site, browser: Browser):
    """A delegation stored before the 10-year bound existed still renders (in UTC)."""
    gateway = site.stack.gateway
    assert gateway.delegations is not None
    assert gateway.validator is not None
    holder = await gateway.validator.validate(await site.stack.token("dr-martin"))
    end = dt.datetime(9999, 12, 31, 23, 30, tzinfo=dt.UTC)
    granted = await gateway.delegations.grant(holder, MARTIN, MOREAU, ["read"])
    assert gateway._engine is not None
    async with gateway._engine.begin() as db:  # a row the service would no longer write
        await db.execute(
            update(DelegationRow).where(DelegationRow.id == granted.id).values(expires_at=end)
        )
    cookie = (await log_in(browser, site)).session_id
    page = await browser.request("GET", f"{site.base}/ui/delegations", cookie)
    assert page.status_code == 200, page.text
    assert "31/12/9999 23:30 UTC" in page.text


@pytest.mark.parametrize(
    ("start", "dribble"),
    [
        (b"", b""),  # connects and says nothing
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-Slow: a\r\n"),  # a head that goes on
        (
            b"POST /v1/mailboxes/a@b.fr/delegations HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 1000\r\nContent-Type: application/json\r\n\r\n{",
            b" ",  # a body a byte at a time
        ),
    ],
)
async def test_a_request_that_never_ends_is_cut(site: Site, start: bytes, dribble: bytes) -> None:
    """uvicorn times out an idle keep-alive connection, not one that dribbles a request
    (slowloris): each request must arrive whole within http.request_timeout."""
    reader, writer = await asyncio.open_connection("127.0.0.1", site.stack.gateway.http_port)
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        writer.write(start)
        for _ in range(100):  # what keeps the connection busy does not reset the deadline
            writer.write(dribble)
            try:
                if not await asyncio.wait_for(reader.read(65536), 0.5):
                    break  # cut
            except TimeoutError:
                continue
        else:
            raise AssertionError("the dribbling connection was never cut")
    finally:
        writer.close()
    assert loop.time() - began >= REQUEST_TIMEOUT - 0.5
    async with httpx.AsyncClient() as http:  # and the listener serves the others
        assert (await http.get(f"{site.base}/healthz")).status_code == 200
