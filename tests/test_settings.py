"""One settings tree: defaults, then the TOML file, then LPSGW_ variables, then overrides."""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from gateway.backends.imap_smtp.backend import ImapSmtpBackend
from gateway.backends.kinds import backends_from_settings
from gateway.backends.routing import NoRoute, Route, Router
from gateway.cli import app as cli_app
from gateway.settings import (
    BackendSettings,
    HttpSettings,
    ImapFrontSettings,
    MockSettings,
    MssSettings,
    RoutingSettings,
    Settings,
    SmtpFrontSettings,
    TlsSettings,
    UsageSettings,
    is_domain,
    load_settings,
)
from mock_operator.server import MockOperator
from psc_auth import ValidationMode, ValidatorConfig


def test_defaults_match_the_contract(monkeypatch: pytest.MonkeyPatch):
    for name in [n for n in __import__("os").environ if n.startswith("LPSGW_")]:
        monkeypatch.delenv(name)
    settings = load_settings()
    assert settings.data_dir == Path(".lps-gateway")
    assert settings.mock.http_port == 8090
    assert settings.mock.issuer() == "http://127.0.0.1:8090/auth/realms/esante-wallet"
    assert settings.mock.access_token_lifetime == 120
    assert isinstance(settings.psc, ValidatorConfig)
    assert settings.psc.issuer == "http://127.0.0.1:8090/auth/realms/esante-wallet"


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "gateway.toml"
    config.write_text(
        'data_dir = "/srv/lps"\n'
        "[mock]\nhttp_port = 9000\naccess_token_lifetime = 60\n"
        '[psc]\nmode = "introspect"\nintrospection_client_id = "gw"\nclient_ids = ["a"]\n'
    )
    monkeypatch.setenv("LPSGW_MOCK__HTTP_PORT", "9100")
    monkeypatch.setenv("LPSGW_PSC__CLIENT_IDS", '["lps-demo", "lps-other"]')
    monkeypatch.setenv("LPSGW_LOG__FORMAT", "json")
    settings = load_settings(config, mock={"ciba_interval": 3})
    assert settings.data_dir == Path("/srv/lps")
    assert settings.mock.access_token_lifetime == 60, "from the file"
    assert settings.mock.http_port == 9100, "the environment beats the file"
    assert settings.mock.ciba_interval == 3, "overrides beat both"
    assert settings.psc.mode is ValidationMode.INTROSPECT
    assert settings.psc.client_ids == ["lps-demo", "lps-other"]
    assert settings.log.format == "json"


def test_bad_values_are_refused(tmp_path: Path):
    config = tmp_path / "bad.toml"
    config.write_text("[mock]\nhttp_port = 70000\n")
    with pytest.raises(ValidationError):
        load_settings(config)
    config.write_text("unknown_key = 1\n")
    with pytest.raises(ValidationError):
        load_settings(config)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.toml")


@pytest.mark.parametrize("section", ["imap", "smtp"])
def test_proxy_protocol_peers_are_networks_checked_at_load(section: str):
    model = ImapFrontSettings if section == "imap" else SmtpFrontSettings
    assert model().proxy_protocol_from == []
    taken = model(proxy_protocol_from=["10.0.0.10", "192.0.2.0/24", "2001:db8::/32"])
    assert taken.proxy_protocol_from == ["10.0.0.10", "192.0.2.0/24", "2001:db8::/32"]
    with pytest.raises(ValidationError, match="proxy_protocol_from"):
        model(proxy_protocol_from=["10.0.0.300/32"])
    with pytest.raises(ValidationError, match="proxy_protocol_from"):
        model(proxy_protocol_from=["haproxy.local"])


def test_the_smtp_hostname_is_a_host_name_checked_at_load():
    """It goes on the greeting line: nothing that could end or bend the line passes."""
    assert SmtpFrontSettings(hostname="smtp.gw.example.fr").name() == "smtp.gw.example.fr"
    assert is_domain(SmtpFrontSettings().name())  # the machine's, or localhost
    for bad in ("smtp.example.fr\r\n250 AUTH PLAIN", "a b", "-smtp.fr", "a..fr", "", "é.fr"):
        with pytest.raises(ValidationError, match="hostname"):
            SmtpFrontSettings(hostname=bad)
    with pytest.raises(ValidationError, match="hostname"):
        SmtpFrontSettings(hostname="a" * 64 + ".fr")


def test_forwarded_allow_ips_are_networks_checked_at_load():
    assert HttpSettings().forwarded_allow_ips == []
    assert HttpSettings(forwarded_allow_ips=["10.0.0.0/8"]).forwarded_allow_ips == ["10.0.0.0/8"]
    with pytest.raises(ValidationError, match="forwarded_allow_ips"):
        HttpSettings(forwarded_allow_ips=["*"])


def test_example_config_loads():
    example = Path(__file__).parent.parent / "config.example.toml"
    settings = load_settings(example)
    assert settings.psc.mode is ValidationMode.LOCAL


# -- backends and routing ------------------------------------------------------------------

EXAMPLE = Path(__file__).parent.parent / "config.example.toml"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No LPSGW_ variable of the developer's shell leaks into a test."""
    for name in [n for n in os.environ if n.startswith("LPSGW_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def _fields(kind: Any) -> dict[str, Any]:
    """A settings class's fields and their types (pydantic models and dataclasses)."""
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return {name: info.annotation for name, info in kind.model_fields.items()}
    if dataclasses.is_dataclass(kind):
        return {f.name: f.type for f in dataclasses.fields(kind)}
    return {}


def _unknown_keys(kind: Any, table: dict[str, Any], path: str = "") -> list[str]:
    """Keys of a TOML table that no field of `kind` takes (nested models ignore extras, so a
    stale key in the example would otherwise load silently)."""
    fields = _fields(kind)
    unknown: list[str] = []
    for key, value in table.items():
        if key not in fields:
            unknown.append(f"{path}{key}")
            continue
        annotation = fields[key]
        if not isinstance(value, dict):
            continue
        if typing.get_origin(annotation) is dict:
            item = typing.get_args(annotation)[1]
            for name, entry in value.items():
                if _fields(item) and isinstance(entry, dict):
                    unknown += _unknown_keys(item, entry, f"{path}{key}.{name}.")
        else:
            unknown += _unknown_keys(annotation, value, f"{path}{key}.")
    return unknown


def test_every_key_of_the_example_is_a_setting():
    table = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert {"tls", "imap", "smtp", "backends", "routing"} <= set(table)
    assert _unknown_keys(Settings, table) == []
    assert _unknown_keys(Settings, {"imap": {"max_lines": 1}}) == ["imap.max_lines"], "sanity"


def test_example_front_sections_show_the_defaults(clean_env: pytest.MonkeyPatch):
    settings = load_settings(EXAMPLE)
    assert settings.tls == TlsSettings()
    assert settings.imap == ImapFrontSettings()
    assert settings.smtp == SmtpFrontSettings()


def test_example_backend_is_the_demo_mock(clean_env: pytest.MonkeyPatch):
    settings = load_settings(EXAMPLE)
    assert list(settings.backends) == ["modern"]
    modern = settings.backends["modern"]
    assert (modern.imap_host, modern.imap_port, modern.imap_tls) == ("127.0.0.1", 2143, "starttls")
    assert (modern.smtp_host, modern.smtp_port, modern.smtp_tls) == ("127.0.0.1", 2587, "starttls")
    assert modern.login == "master"
    assert modern.master_user == MockSettings().master_user == "lps-gateway"
    # `lps-gateway demo` runs the mock in <data_dir>/mock-operator
    mock_dir = settings.data_dir / "mock-operator"
    assert modern.master_password_file == mock_dir / "master.secret"
    assert modern.ca_file == mock_dir / "tls" / "dev-cert.pem"
    assert settings.routing.default == "modern"
    router = Router(backends_from_settings(settings.backends), settings.routing)
    assert router.route("claire.martin@medecin.mssante.fr").name == "modern"


async def test_example_paths_are_where_the_mock_keeps_its_secret(mock_op: MockOperator):
    """The example's master_password_file and ca_file name the files the mock writes."""
    example = load_settings(EXAMPLE).backends["modern"]
    demo_mock_dir = Path(".lps-gateway") / "mock-operator"
    assert mock_op.master is not None
    assert mock_op.tls_cert is not None
    for configured, written in [
        (example.master_password_file, mock_op.data_dir / "master.secret"),
        (example.ca_file, mock_op.tls_cert),
    ]:
        assert configured is not None
        assert written.is_file()
        assert mock_op.data_dir / configured.relative_to(demo_mock_dir) == written
    pointed = example.model_copy(
        update={"master_password_file": mock_op.data_dir / "master.secret"}
    )
    assert pointed.password() == mock_op.master.password


def test_env_overrides_nested_backend_keys(tmp_path: Path, clean_env: pytest.MonkeyPatch):
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[backends.modern]\n"
        'imap_host = "imap.operator.example"\nimap_port = 143\nsmtp_port = 465\n'
        'smtp_tls = "implicit"\nmaster_user = "gw"\n'
        "[backends.old]\n"
        'imap_host = "old.operator.example"\n'
        '[routing]\ndefault = "old"\n'
        '[routing.domains]\n"medecin.mssante.fr" = "modern"\n'
    )
    clean_env.setenv("LPSGW_BACKENDS__MODERN__IMAP_PORT", "2143")
    clean_env.setenv("LPSGW_BACKENDS__MODERN__MASTER_PASSWORD", "from-the-environment")
    clean_env.setenv("LPSGW_BACKENDS__SPARE__IMAP_HOST", "spare.operator.example")
    clean_env.setenv("LPSGW_ROUTING__DEFAULT", "spare")
    settings = load_settings(config)
    modern = settings.backends["modern"]
    assert modern.imap_port == 2143, "the environment beats the file"
    assert modern.imap_host == "imap.operator.example", "other keys of the file are kept"
    assert (modern.smtp_port, modern.smtp_tls, modern.master_user) == (465, "implicit", "gw")
    assert modern.password() == "from-the-environment"
    assert settings.backends["old"].imap_host == "old.operator.example", "untouched backend"
    assert settings.backends["spare"].imap_host == "spare.operator.example"
    assert settings.backends["spare"].imap_port == 143, "an env-only backend gets defaults"
    assert settings.routing.default == "spare"
    assert settings.routing.domains == {"medecin.mssante.fr": "modern"}, "kept from the file"


def test_router_precedence():
    backends = backends_from_settings(
        {name: BackendSettings(imap_host=f"{name}.example") for name in "abcd"}
    )
    routing = RoutingSettings(
        default="d",
        domains={"Medecin.MSSante.fr": "c"},
        mailboxes={" Claire.Martin@medecin.mssante.fr ": "a"},
    )
    router = Router(backends, routing)
    martin, dupont = "claire.martin@medecin.mssante.fr", "jean.dupont@medecin.mssante.fr"
    assert router.route(martin, registered="b") == Route("a", backends["a"]), "mailbox first"
    assert router.route("CLAIRE.MARTIN@MEDECIN.MSSANTE.FR").name == "a", "case-insensitive"
    assert router.route(dupont, registered="b").name == "b", "then the registry's backend"
    assert router.route(dupont).name == "c", "then the domain"
    assert router.route(dupont, registered="gone").name == "c", "an unknown record is skipped"
    assert router.route("luc.durand@infirmier.mssante.fr").name == "d", "then the default"
    chosen = router.route("luc.durand@infirmier.mssante.fr").backend
    assert isinstance(chosen, ImapSmtpBackend)
    assert chosen.settings.imap_host == "d.example"


def test_router_without_a_route_or_with_unknown_names():
    backends = backends_from_settings({"modern": BackendSettings()})
    router = Router(backends, RoutingSettings(domains={"medecin.mssante.fr": "modern"}))
    assert router.route("a@medecin.mssante.fr").name == "modern"
    with pytest.raises(NoRoute, match=r"b@infirmier\.mssante\.fr"):
        router.route("b@infirmier.mssante.fr")
    assert issubclass(NoRoute, LookupError)
    for routing in [
        RoutingSettings(default="legacy"),
        RoutingSettings(domains={"medecin.mssante.fr": "legacy"}),
        RoutingSettings(mailboxes={"a@medecin.mssante.fr": "legacy"}),
    ]:
        with pytest.raises(ValueError, match="legacy"):
            Router(backends, routing)


def test_backend_password_from_a_file(tmp_path: Path):
    secret = tmp_path / "master.secret"
    secret.write_text("  from-the-file\n", encoding="utf-8")
    backend = BackendSettings(master_password="inline", master_password_file=secret)
    assert backend.password() == "from-the-file", "the file wins, stripped"
    assert BackendSettings(master_password="inline").password() == "inline"
    assert BackendSettings().password() == ""
    with pytest.raises(FileNotFoundError):
        BackendSettings(master_password_file=tmp_path / "missing").password()


def test_master_password_never_shown(tmp_path: Path, clean_env: pytest.MonkeyPatch):
    clean_env.setenv("LPSGW_BACKENDS__MODERN__MASTER_PASSWORD", "hunter2-master-pw")
    settings = load_settings(backends={"spare": {"master_password": "other-secret-pw"}})
    assert settings.backends["modern"].password() == "hunter2-master-pw"
    assert settings.backends["spare"].password() == "other-secret-pw"
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert "hunter2-master-pw" not in shown
        assert "other-secret-pw" not in shown
    assert "hunter2" not in repr(settings.backends["modern"])


# -- [mss] policy -----------------------------------------------------------------------------


def test_mss_policy_defaults_to_enforce_and_the_example_shows_it(clean_env: pytest.MonkeyPatch):
    assert Settings().mss.policy == "enforce"
    assert load_settings(EXAMPLE).mss == MssSettings()
    assert load_settings(EXAMPLE).usage == UsageSettings()


def test_mss_policy_from_the_file_then_the_environment(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
):
    config = tmp_path / "gateway.toml"
    config.write_text('[mss]\npolicy = "report"\n')
    assert load_settings(config).mss.policy == "report"
    clean_env.setenv("LPSGW_MSS__POLICY", "enforce")
    assert load_settings(config).mss.policy == "enforce", "the environment beats the file"
    clean_env.setenv("LPSGW_MSS__POLICY", "report")
    assert load_settings().mss.policy == "report"


@pytest.mark.parametrize("value", ["block", "Report", "", "warn"])
def test_an_unknown_mss_policy_is_refused_naming_the_key_and_the_choices(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, value: str
):
    config = tmp_path / "gateway.toml"
    config.write_text(f'[mss]\npolicy = "{value}"\n')
    with pytest.raises(ValidationError) as refused:
        load_settings(config)
    [error] = refused.value.errors()
    assert error["loc"] == ("mss", "policy")
    assert "'enforce' or 'report'" in error["msg"]
    config.write_text('[mss]\npolicy = "report"\nstrict = true\n')
    with pytest.raises(ValidationError):
        load_settings(config)  # a misspelt key of the section is an error too


def test_lps_gateway_says_which_key_is_wrong(tmp_path: Path, clean_env: pytest.MonkeyPatch):
    """`lps-gateway serve` (and demo, usage) with a bad value: one line naming the key and
    what it accepts, exit 1, no traceback."""
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{tmp_path / "state"}"\n[mss]\npolicy = "block"\n')
    for args in (["serve"], ["usage"]):
        result = CliRunner().invoke(cli_app, [*args, "--config", str(config)])
        assert result.exit_code == 1
        assert (
            "lps-gateway: configuration error: mss.policy: Input should be 'enforce' or 'report'"
            in result.output
        )
        assert "Traceback" not in result.output
        assert "block" not in result.output  # the value is not echoed: it may be a secret
    assert not (tmp_path / "state").exists()


def test_keep_warm_defaults_bounds_and_example():
    """30 s and 64 sessions unless set; never negative; the example names both."""
    assert (BackendSettings().keep_warm, BackendSettings().keep_warm_max) == (30.0, 64)
    assert BackendSettings(keep_warm=0).keep_warm == 0
    for wrong in ({"keep_warm": -1}, {"keep_warm_max": -1}, {"keep_warm": 7_200}):
        with pytest.raises(ValidationError, match="keep_warm"):
            BackendSettings(**wrong)
    modern = load_settings(EXAMPLE).backends["modern"]
    assert (modern.keep_warm, modern.keep_warm_max) == (30.0, 64)
