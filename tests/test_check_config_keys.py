"""``gateway check-config`` checks every file and key ``serve`` needs, and ``serve`` never shows a traceback.

What an integrator hit: check-config passed an introspection ``private_key_file`` that did not
exist and an RSA key configured for ES256, which ``serve`` then refused with a traceback
("Expecting a PEM-formatted key").
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.cli import main
from tests.helpers import MINIMAL_CONFIG

ROOT = Path(__file__).resolve().parent.parent


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def private_key_jwt_config(tmp_path: Path, key_file: Path, algorithm: str) -> Path:
    data = yaml.safe_load(MINIMAL_CONFIG)
    data["issuers"][0]["introspection"] = {
        "endpoint": "http://127.0.0.1:1/introspect", "client_id": "gw", "auth_method": "private_key_jwt",
        "private_key_file": str(key_file), "private_key_algorithm": algorithm,
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def line_of(path: Path, key: str, after: str = "") -> int:
    """The 1-based line of the first ``key:`` (after the line of ``after:`` when given)."""
    lines = path.read_text().splitlines()
    start = next(n for n, line in enumerate(lines) if line.strip().startswith(after + ":")) if after else 0
    return next(n for n, line in enumerate(lines[start:], start + 1) if line.strip().startswith(key + ":"))


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    files: dict[str, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey] = {
        "rsa": rsa.generate_private_key(65537, 2048), "p256": ec.generate_private_key(ec.SECP256R1()),
             "p384": ec.generate_private_key(ec.SECP384R1())}
    paths = {}
    for name, key in files.items():
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_bytes(pem(key))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    paths["garbage"] = garbage
    return paths


@pytest.mark.parametrize(("key", "algorithm", "field", "message"), [
    ("missing", "RS256", "private_key_file", "cannot read: No such file or directory"),
    ("garbage", "RS256", "private_key_file", "not an unencrypted PEM private key"),
    ("rsa", "ES256", "private_key_algorithm", "ES256 needs an EC P-256 key, but {path} holds an RSA key"),
    ("p384", "ES256", "private_key_algorithm", "ES256 needs an EC P-256 key, but {path} holds an EC P-384 key"),
    ("p256", "PS256", "private_key_algorithm", "PS256 needs an RSA key, but {path} holds an EC P-256 key"),
    ("p256", "EdDSA", "private_key_algorithm", "EdDSA needs an Ed25519 or Ed448 key, but {path} holds an EC P-256"),
])
def test_check_config_refuses_a_key_serve_could_not_sign_with(
    tmp_path: Path, keys: dict[str, Path], key: str, algorithm: str, field: str, message: str
) -> None:
    key_file = keys.get(key, tmp_path / "missing.pem")
    path = private_key_jwt_config(tmp_path, key_file, algorithm)
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 1
    expected = f"error: {path}:{line_of(path, field)}: issuers[0].introspection.{field}: "
    assert result.stderr.startswith(expected), result.stderr
    assert message.format(path=key_file) in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("key", "algorithm"), [("rsa", "RS256"), ("rsa", "PS384"), ("p256", "ES256"),
                                                ("p384", "ES384")])
def test_check_config_accepts_a_key_that_fits(tmp_path: Path, keys: dict[str, Path], key: str, algorithm: str) -> None:
    result = CliRunner().invoke(main, ["check-config", str(private_key_jwt_config(tmp_path, keys[key], algorithm))])
    assert result.exit_code == 0, result.output


def run_serve(path: Path) -> subprocess.CompletedProcess[str]:
    gateway = Path(sys.executable).parent / "gateway"
    return subprocess.run([str(gateway), "serve", "--config", str(path)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "GATEWAY_ADMIN_SECRET": ""})


def test_serve_refuses_the_same_key_in_one_line(tmp_path: Path, keys: dict[str, Path]) -> None:
    path = private_key_jwt_config(tmp_path, keys["rsa"], "ES256")
    result = run_serve(path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {path}:")
    assert "ES256 needs an EC P-256 key" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_reports_a_start_up_problem_without_a_traceback(tmp_path: Path) -> None:
    """What no configuration check can know in advance: the admin address is taken."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        data = yaml.safe_load(MINIMAL_CONFIG)
        data["listen"], data["admin_listen"] = "127.0.0.1:0", f"127.0.0.1:{taken.getsockname()[1]}"
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(data))
        result = run_serve(path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert any(line.startswith(f"error: {path}: ") and "address" in line.lower() for line in result.stderr.splitlines())


def test_admin_audiences_must_not_be_an_issuers_audience(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(MINIMAL_CONFIG + "admin:\n  audiences: [gateway-admin, api]\n")
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 1
    assert result.stderr == (f"error: {path}:{line_of(path, 'audiences', after='admin')}: admin.audiences: api is "
                             "also an audience of issuer https://as.example (issuers[0].audiences): admin tokens "
                             "must have an audience of their own\n")


@pytest.mark.parametrize(("url", "message"), [
    ("memcached://127.0.0.1:1/0", "Redis URL must specify one of the following schemes"),
    ("redis://127.0.0.1:port/0", "Port could not be cast to integer value"),
])
def test_check_config_refuses_a_redis_url_serve_would_refuse(tmp_path: Path, url: str, message: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(MINIMAL_CONFIG + f"revocation:\n  redis_url: {url}\n")
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {path}:{line_of(path, 'redis_url')}: revocation.redis_url: {message}")


def snapshot_config(tmp_path: Path, snapshot: str, redis: bool = True) -> Path:
    path = tmp_path / "gateway.yaml"
    redis_url = "  redis_url: redis://127.0.0.1:1/0\n" if redis else ""
    path.write_text(MINIMAL_CONFIG + f"revocation:\n{redis_url}  snapshot:\n    {snapshot}\n")
    return path


@pytest.mark.parametrize(("snapshot", "field", "message"), [
    ("key_file: {missing}", "key_file", "cannot read {missing}: No such file or directory"),
    ("key_file: {short}", "key_file", "the key in {short} is 31 bytes long: it must be at least 32"),
    ("key_env: SNAPSHOT_KEY_UNSET", "key_env", "the environment variable SNAPSHOT_KEY_UNSET is not set"),
    ("key_env: SNAPSHOT_KEY_SHORT", "key_env", "the key in $SNAPSHOT_KEY_SHORT is 8 bytes long"),
    ("key_fil: {short}", "key_fil", "unknown key; did you mean key_file?"),
])
def test_check_config_refuses_a_snapshot_key_serve_could_not_sign_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snapshot: str, field: str, message: str
) -> None:
    files = {"missing": tmp_path / "missing.key", "short": tmp_path / "short.key"}
    files["short"].write_bytes(b"k" * 31 + b"\n")  # the final line break is not part of the key
    monkeypatch.delenv("SNAPSHOT_KEY_UNSET", raising=False)
    monkeypatch.setenv("SNAPSHOT_KEY_SHORT", "8 bytes!")
    path = snapshot_config(tmp_path, snapshot.format(**files))
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 1
    expected = f"error: {path}:{line_of(path, field)}: revocation.snapshot.{field}: {message.format(**files)}"
    assert result.stderr.startswith(expected), result.stderr


def test_check_config_refuses_a_snapshot_without_a_key_or_without_redis(tmp_path: Path) -> None:
    key = tmp_path / "snapshot.key"
    key.write_bytes(os.urandom(32))
    for text, problem in [
        ("key_file: null", "revocation.snapshot: the snapshot needs its signing key: key_file or key_env"),
        (f"key_file: {key}\n    key_env: X", "revocation.snapshot: the snapshot needs its signing key"),
    ]:
        result = CliRunner().invoke(main, ["check-config", str(snapshot_config(tmp_path, text))])
        assert result.exit_code == 1 and problem in result.stderr, result.stderr
    path = snapshot_config(tmp_path, f"key_file: {key}", redis=False)
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 1
    assert (f"{path}:{line_of(path, 'snapshot')}: revocation.snapshot: applies to a list in Redis only"
            in result.stderr), result.stderr
    assert CliRunner().invoke(main, ["check-config", str(snapshot_config(tmp_path, f"key_file: {key}"))]).exit_code == 0


def test_serve_refuses_to_start_without_the_snapshot_key(tmp_path: Path) -> None:
    path = snapshot_config(tmp_path, f"key_file: {tmp_path / 'gone.key'}")
    result = run_serve(path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {path}:{line_of(path, 'key_file')}: revocation.snapshot.key_file: "
                                    f"cannot read {tmp_path / 'gone.key'}"), result.stderr
    assert "Traceback" not in result.stderr
