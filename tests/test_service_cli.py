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


@pytest.fixture
def no_server(monkeypatch):
    """Fail the test if ``amulet-lab load`` tries to start a service."""
    from amulet_lab.service import server

    def refuse(*args, **kwargs):
        raise AssertionError("a server was started for arguments that should have been refused")

    monkeypatch.setattr(server, "ServerProcess", refuse)


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--clients", "0"], "E_VALIDATION"),
        (["--clients", "-3"], "E_VALIDATION"),
        (["--duration", "0"], "E_VALIDATION"),
        (["--duration", "99999"], "E_VALIDATION"),
        (["--image", "/nonexistent/photo.jpg"], "E_FILE_NOT_FOUND"),
    ],
)
def test_load_command_refuses_bad_arguments_before_starting_a_server(env, no_server, capsys, argv, code):
    assert main(["load", "--duration", "1", *argv]) == 1
    assert f"error [{code}]" in capsys.readouterr().err


def test_load_functions_validate_their_arguments(no_server):
    import asyncio

    from amulet_lab.bench.load import arun_load, run_load
    from amulet_lab.errors import ValidationError

    with pytest.raises(ValidationError) as info:  # an empty token list used to crash with ZeroDivisionError
        asyncio.run(arun_load("http://127.0.0.1:9", [b"x"], duration_s=0.1, clients=1, tokens=[]))
    assert info.value.field == "tokens"
    for kwargs in ({"clients": 2.5}, {"clients": True}, {"warmup_s": -1}, {"images": []}):
        with pytest.raises(ValidationError):
            run_load("http://127.0.0.1:9", **{"duration_s": 1, "clients": 1, "images": [b"x"], **kwargs})
    with pytest.raises(ValidationError) as no_url:  # a service is started by the caller (the CLI), never here
        run_load(None, duration_s=1, clients=1, images=[b"x"])  # type: ignore[arg-type]
    assert no_url.value.field == "url"


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_serve_refuses_a_bad_port_with_a_code(env, capsys, port):
    # Before: uvicorn's bind() raised a bare OverflowError (a traceback) after the model had started loading.
    assert main(["serve", "--port", port]) == 1
    assert "error [E_VALIDATION]" in capsys.readouterr().err


def test_uvicorn_config_validates_host_and_port():
    from amulet_lab.errors import ValidationError
    from amulet_lab.service.server import uvicorn_config

    assert uvicorn_config(object(), "127.0.0.1", 0).port == 0
    for host, port in (("", 8000), ("127.0.0.1", 65536), ("127.0.0.1", True), ("127.0.0.1", "8000")):
        with pytest.raises(ValidationError):
            uvicorn_config(object(), host, port)


def test_load_command_refuses_a_bad_stall_count_before_starting_a_server(env, no_server, capsys):
    assert main(["load", "--duration", "1", "--stall", "5000"]) == 1
    assert "error [E_VALIDATION]" in capsys.readouterr().err
    args = build_parser().parse_args(["load", "--stall", "64", "--distinct", "2000", "--batch-max-size", "1", "--baseline"])
    assert (args.stall, args.distinct, args.batch_max_size, args.baseline) == (64, 2000, 1, True)
