"""`lps-gateway check-config` as an operator runs it: a subprocess on real files, real
closed ports and a real running mock operator (IMAP, SMTP, historic web services) with a
real database (SQLite, and PostgreSQL under LPS_TEST_DATABASE_URL)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from gateway.runtime.tls import dev_certificate
from mock_operator.server import MockOperator
from tests.support.net import closed_port
from tests.test_cli import command

pytestmark = pytest.mark.slow


def check_config(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [command("lps-gateway"), "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def problems(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert done.returncode == 1, done.stdout + done.stderr
    found = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert len(found) == len(done.stdout.splitlines()), "one problem per key"
    return found


def test_unknown_keys_bad_types_and_ciphers_each_on_their_line(tmp_path: Path):
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[log]\nformt = "json"\nlevel = 3\n'
        '[tls]\nciphers = "NOT-A-CIPHER"\n'
        '[imap]\nport = "many"\n'
        '[backends.modern]\nmaster_password = "s3cret-value"\nimap_prot = 143\n'
    )
    done = check_config(config)
    assert "s3cret-value" not in done.stdout + done.stderr
    found = problems(done)
    assert found["log.formt"] == "unknown key"
    assert found["backends.modern.imap_prot"] == "unknown key"
    assert "DEBUG" in found["log.level"]
    assert "integer" in found["imap.port"]
    assert "NOT-A-CIPHER" in found["tls.ciphers"]
    assert len(found) == 5


def test_a_file_that_is_not_toml_or_not_there(tmp_path: Path):
    config = tmp_path / "gateway.toml"
    config.write_text("[log\nlevel = ")
    assert "not valid TOML" in problems(check_config(config))["config"]
    assert "not found" in problems(check_config(tmp_path / "missing.toml"))["config"]


def test_unreadable_files_unreachable_peers_and_dangling_routes(tmp_path: Path):
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    empty = tmp_path / "empty.secret"
    empty.write_text("\n")
    ports = [closed_port() for _ in range(4)]
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'database_url = "postgresql://postgres@127.0.0.1:{ports[0]}/none"\n'
        '[psc]\nclient_ids = ["lps-demo"]\njwks_max_age_seconds = 30\n'
        f'[tls]\ncert = "{tmp_path / "missing-cert.pem"}"\nkey = "{not_pem}"\n'
        f'[cards]\nca_file = "{not_pem}"\ncrl_file = "{tmp_path / "missing.crl"}"\n'
        f"[backends.modern]\nimap_port = {ports[1]}\nsmtp_port = {ports[2]}\n"
        f'master_password_file = "{tmp_path / "missing.secret"}"\nca_file = "{not_pem}"\n'
        f'[backends.other]\nmaster_password_file = "{empty}"\n'
        f"imap_port = {ports[1]}\nsmtp_port = {ports[2]}\n"
        '[backends.historic]\nkind = "legacy_ws"\n'
        f'ws_url = "http://127.0.0.1:{ports[3]}/mss-msg-services/services"\n'
        '[routing]\ndefault = "modern"\ndomains = { "x.fr" = "gone" }\n'
    )
    found = problems(check_config(config))
    assert "missing-cert.pem" in found["tls.cert"]
    assert "missing.secret" in found["backends.modern.master_password_file"]
    assert found["backends.other.master_password_file"] == "empty"
    assert "unusable" in found["backends.modern.ca_file"]
    assert "not PEM" in found["cards.ca_file"]
    assert "connection refused" in found["backends.modern.imap"]
    assert "connection refused" in found["backends.modern.smtp"]
    assert str(ports[3]) in found["backends.historic.ws"]
    assert "Connect" in found["database_url"] or "refused" in found["database_url"]
    assert "'gone'" in found["routing.domains.x.fr"]
    assert "refetch_interval" in found["psc.jwks_max_age_seconds"]
    assert "routing.default" not in found


async def test_a_configuration_fit_to_start_is_ok(
    tmp_path: Path, mock_op: MockOperator, fresh_db_url: str
):
    assert mock_op.master is not None
    assert mock_op.historic_auth is not None
    authority = mock_op.historic_auth.authority
    secret = tmp_path / "master.secret"
    secret.write_text(mock_op.master.password + "\n")
    cert, key = dev_certificate(mock_op.data_dir / "tls")
    assert mock_op.tls_cert == cert
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\ndatabase_url = "{fresh_db_url}"\n'
        '[psc]\nclient_ids = ["lps-demo"]\n'
        f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
        f'[cards]\nca_file = "{authority.certificate_path}"\ncrl_file = "{authority.crl_path}"\n'
        f"[backends.modern]\nimap_port = {mock_op.imap_port}\nsmtp_port = {mock_op.smtp_port}\n"
        f'master_user = "{mock_op.master.user}"\nmaster_password_file = "{secret}"\n'
        f'ca_file = "{cert}"\n'
        '[backends.historic]\nkind = "legacy_ws"\n'
        f'ws_url = "{mock_op.http_url}/mss-msg-services/services"\n'
        '[routing]\ndefault = "modern"\n'
    )
    done = await asyncio.to_thread(check_config, config)
    assert done.returncode == 0, done.stdout + done.stderr
    (line,) = done.stdout.splitlines()
    assert line.startswith("configuration OK")
    assert "modern (imap_smtp)" in line
    assert "historic (legacy_ws)" in line
    assert not (tmp_path / "data").exists(), "a check creates nothing"
