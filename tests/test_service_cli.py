"""``amulet-lab token`` and the service sub-commands' parsers."""

from __future__ import annotations

import pytest

from amulet_lab.cli import build_parser, main
from amulet_lab.config import load_settings
from amulet_lab.service.auth import verify_token

KEY = "c" * 32


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ("AMULET_SECRET_KEY", "AMULET_DEBUG", "AMULET_JWT_AUDIENCE", "AMULET_JWT_ISSUER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AMULET_SECRET_KEY", KEY)


def test_token_command_issues_a_verifiable_token(env, capsys):
    assert main(["token", "--subject", "alice", "--ttl", "120", "--scope", "predict"]) == 0
    token = capsys.readouterr().out.strip()
    claims = verify_token(token, load_settings({"AMULET_SECRET_KEY": KEY}, dotenv=None))
    assert claims.subject == "alice" and claims.allows("predict") and not claims.allows("metrics")


def test_token_command_refuses_without_a_key(env, monkeypatch, capsys):
    monkeypatch.setenv("AMULET_SECRET_KEY", "changeme")
    assert main(["token", "--subject", "alice"]) == 1
    assert "E_SECRET_KEY" in capsys.readouterr().err


def test_token_command_refuses_an_unset_key_even_in_debug(env, monkeypatch, capsys):
    monkeypatch.delenv("AMULET_SECRET_KEY")
    monkeypatch.setenv("AMULET_DEBUG", "true")
    assert main(["token", "--subject", "alice"]) == 1
    captured = capsys.readouterr()
    assert "E_SECRET_KEY" in captured.err and captured.out == ""


def test_serve_and_load_parsers_have_loopback_and_bounded_defaults():
    parser = build_parser()
    args = parser.parse_args(["serve"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    args = parser.parse_args(["load", "--duration", "2", "--clients", "3"])
    assert (args.url, args.duration, args.clients) == (None, 2.0, 3)
