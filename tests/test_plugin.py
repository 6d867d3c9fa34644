"""``twistd sipha`` as a user runs it: the installed console script, in a subprocess.

Needs the project installed (``pip install -e .``) so that twistd finds the
dropin in src/twisted/plugins/.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tlskit import CertificateAuthority

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "etc" / "sipha.toml"
TWISTD = Path(sys.executable).with_name("twistd")


def twistd(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    if not TWISTD.exists():
        pytest.fail(f"{TWISTD} not found: install the project with `pip install -e .`")
    return subprocess.run(
        [str(TWISTD), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def test_twistd_lists_sipha(tmp_path: Path) -> None:
    result = twistd("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\s+sipha\s+SIP load-balancing proxy$", result.stdout, re.MULTILINE)


def test_sipha_help_shows_options(tmp_path: Path) -> None:
    result = twistd("sipha", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("--config=", "--db-url=", "--check-config", "/etc/sipha/sipha.toml"):
        assert option in result.stdout


def test_check_config_accepts_the_sample(tmp_path: Path) -> None:
    result = twistd("sipha", "--config", SAMPLE, "--check-config", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"config OK: {SAMPLE}\n", "")


def test_check_config_takes_a_user_route(tmp_path: Path) -> None:
    """A route is a plain function in any importable module."""
    config = tmp_path / "sipha.toml"
    config.write_text('[route]\nfunction = "json:dumps"\n')
    result = twistd("sipha", "-c", config, "--check-config", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[proxy]\nlistne = []\n", "proxy.listne: unknown key"),
        (
            '[proxy]\nlisten = ["udp:[::1]:99999"]\n',
            "proxy.listen[0]: 'udp:[::1]:99999' is not an address: port out of range",
        ),
        (
            '[route]\nfunction = "no_such_module_xyz:route"\n',
            "route.function: cannot import 'no_such_module_xyz': No module named 'no_such_module_xyz'",
        ),
    ],
)
def test_bad_config_is_one_line_on_stderr(tmp_path: Path, text: str, error: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    result = twistd("-n", "sipha", "--config", bad, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"sipha: {bad}: {error}"]
    assert result.stdout == ""


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[proxy]\nmax_forwards = = 3\n")
    result = twistd("-n", "sipha", "--config", bad, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"sipha: {bad}:2:16: invalid TOML: invalid value"]


def test_missing_config_file(tmp_path: Path) -> None:
    result = twistd("-n", "sipha", "--config", tmp_path / "nope.toml", cwd=tmp_path)
    assert result.returncode == 1
    assert (
        result.stderr
        == f"sipha: {tmp_path / 'nope.toml'}: cannot read: No such file or directory\n"
    )


def test_bad_db_url(tmp_path: Path) -> None:
    result = twistd("sipha", "-c", SAMPLE, "--db-url", "redis://x", "--check-config", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "sipha: --db-url: 'redis://x' is not a database URL: unsupported scheme 'redis' (sqlite or mysql)"
    ]


def test_bad_config_stops_before_daemonizing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[log]\nlevel = 3\n")
    pidfile, logfile = tmp_path / "twistd.pid", tmp_path / "twistd.log"
    result = twistd("--pidfile", pidfile, "--logfile", logfile, "sipha", "-c", bad, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"sipha: {bad}: log.level: expected a string, got integer"
    ]
    assert not pidfile.exists()
    assert not logfile.exists()


def test_certificates_that_cannot_be_used_are_one_line(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    sipha, other = ca.issue("sipha", "127.0.0.1"), ca.issue("other", "127.0.0.1")
    config = tmp_path / "sipha.toml"
    for tls, error in (
        (
            f'certificate = "{sipha.certificate}"\nprivate_key = "{other.private_key}"',
            f"tls.private_key: {other.private_key}: not the private key of tls.certificate",
        ),
        (
            f'certificate = "{sipha.private_key}"\nprivate_key = "{sipha.private_key}"',
            f"tls.certificate: {sipha.private_key}: no PEM certificate in it",
        ),
        (
            f'ca_certificates = "{config}"',
            f"tls.ca_certificates: {config}: no PEM certificate in it",
        ),
    ):
        listen = '[proxy]\nlisten = ["tls:127.0.0.1:5061"]\n' if "certificate =" in tls else ""
        config.write_text(f"{listen}[tls]\n{tls}\n")
        result = twistd("sipha", "--config", config, "--check-config", cwd=tmp_path)
        assert result.returncode == 1
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"sipha: {config}: {error}"), line


def test_usable_certificates_pass_the_check(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    sipha = ca.issue("sipha", "127.0.0.1")
    config = tmp_path / "sipha.toml"
    config.write_text(
        '[proxy]\nlisten = ["tls:127.0.0.1:5061"]\n[tls]\n'
        f'certificate = "{sipha.certificate}"\nprivate_key = "{sipha.private_key}"\n'
        f'ca_certificates = "{ca.path}"\n'
    )
    result = twistd("sipha", "--config", config, "--check-config", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")


def without_mysqlclient(tmp_path: Path) -> dict[str, str]:
    """An environment where ``import MySQLdb`` fails as it does without the ``mysql`` extra."""
    shadow = tmp_path / "no-mysqlclient" / "MySQLdb"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'MySQLdb'\", name='MySQLdb')\n"
    )
    path = os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


@pytest.mark.parametrize("where", ["file", "--db-url"])
def test_a_mysql_url_without_mysqlclient_is_one_line_naming_the_extra(
    tmp_path: Path, where: str
) -> None:
    """--check-config catches it, before any port is bound."""
    url = "mysql://sipha@db1:3306,db2:3306/sipha"
    config = tmp_path / "sipha.toml"
    config.write_text(f'[database]\nurl = "{url}"\n' if where == "file" else "")
    override = ["--db-url", url] if where == "--db-url" else []
    result = twistd(
        "sipha",
        "-c",
        config,
        *override,
        "--check-config",
        cwd=tmp_path,
        env=without_mysqlclient(tmp_path),
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"sipha: {config}: database.url: a mysql:// URL needs mysqlclient"
        " (No module named 'MySQLdb'): install it with pip install 'sipha[mysql]'"
    ]
