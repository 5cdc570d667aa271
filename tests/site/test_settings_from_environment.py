import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def start(tmp_path, **overrides) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL"}}
    env.update({"INFRASIM_VAR_DIR": str(tmp_path), **overrides})
    for key in [k for k, v in overrides.items() if v is None]:
        env.pop(key)
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "variable, value",
    [
        ("BASE_DOMAIN", "not a domain!"),
        ("MATRIX_DOMAIN", "-bad-.example"),
        ("WEBAUTHN_RP_ID", "under_score.example"),
        ("WEBAUTHN_RP_ORIGIN", "localhost:8080"),
        ("WEBAUTHN_RP_ORIGIN", "https://elsewhere.example"),
        ("WG_GATEWAY_ENDPOINT", "vpn.example.com"),
        ("WG_GATEWAY_ENDPOINT", "vpn.example.com:99999"),
        ("DATABASE_URL", "mysql://db/infrasim"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("DEBUG", "maybe"),
        ("SECRET_KEY", "short"),
        ("INFRASIM_MASTER_KEY", "not-base64!"),
        ("INFRASIM_MASTER_KEY", "c2hvcnQ="),
        ("SIGNUP_ABANDON_SECONDS", "ten"),
        ("S3_BUCKET_PREFIX", "Bad_Prefix"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(tmp_path, variable, value):
    result = start(tmp_path, **{variable: value})
    assert result.returncode != 0
    assert variable in result.stderr.splitlines()[-1], result.stderr[-500:]


def test_defaults_start_on_localhost_8080(tmp_path):
    result = start(tmp_path, WEBAUTHN_RP_ORIGIN=None, WEBAUTHN_RP_ID=None, ALLOWED_HOSTS=None)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_the_seed_variables_are_honoured(tmp_path):
    code = (
        "from django.conf import settings as s;"
        "print(s.BASE_DOMAIN, s.MATRIX_DOMAIN, s.WEBAUTHN_RP_ID, s.WEBAUTHN_RP_ORIGIN, s.WG_GATEWAY_ENDPOINT)"
    )
    env = {
        **os.environ,
        "INFRASIM_VAR_DIR": str(tmp_path),
        "BASE_DOMAIN": "Example.COM",
        "MATRIX_DOMAIN": "matrix.example.com",
        "WEBAUTHN_RP_ID": "example.com",
        "WEBAUTHN_RP_ORIGIN": "https://console.example.com",
        "WG_GATEWAY_ENDPOINT": "vpn.example.com:51820",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "--verbosity", "0", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.stdout.split() == [
        "example.com", "matrix.example.com", "example.com", "https://console.example.com", "('vpn.example.com',", "51820)"
    ]


def test_a_master_key_file_readable_by_others_is_refused(tmp_path):
    key_file = tmp_path / "master.key"
    key_file.write_text("MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=")
    key_file.chmod(0o644)
    result = start(tmp_path, INFRASIM_MASTER_KEY_FILE=str(key_file))
    assert result.returncode != 0
    assert "INFRASIM_MASTER_KEY_FILE" in result.stderr
