"""One settings tree: defaults, then the TOML file, then LPSGW_ variables, then overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import load_settings
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


def test_example_config_loads():
    example = Path(__file__).parent.parent / "config.example.toml"
    settings = load_settings(example)
    assert settings.psc.mode is ValidationMode.LOCAL
