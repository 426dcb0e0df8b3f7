"""Sub-commands of the service: ``serve``, ``token`` and ``load``."""

from __future__ import annotations

import argparse
import json

from amulet_lab.config import Settings

__all__ = ["register"]


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from amulet_lab.service.server import serve

    serve(settings, host=args.host, port=args.port)
    return 0


def _token(args: argparse.Namespace, settings: Settings) -> int:
    from amulet_lab.errors import SecurityError
    from amulet_lab.service.auth import issue_token

    if not (settings.secret_key or "").strip():
        # Even in debug: the service would sign with its own per-process key, so a token signed here with a
        # throwaway key could never be verified by it.
        raise SecurityError(
            "AMULET_SECRET_KEY is not set: a token signed with a throwaway key is useless to the service. "
            "Set the same AMULET_SECRET_KEY for the service and this command.",
            code="E_SECRET_KEY",
            severity="high",
        )
    scopes = args.scope or ["predict", "metrics"]
    print(issue_token(args.subject, args.ttl, settings, scopes=scopes))
    return 0


def _load(args: argparse.Namespace, settings: Settings) -> int:
    from amulet_lab.bench.load import run_load

    result = run_load(
        args.url,
        duration_s=args.duration,
        clients=args.clients,
        image_path=args.image,
        token=args.token,
        settings=settings,
        cold_cache=args.cold,
    )
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.to_text())
    return 0 if result.passed else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve``, ``token`` and ``load``."""
    p = subparsers.add_parser("serve", help="run the HTTP service (uvicorn; loopback by default)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    p.set_defaults(func=_serve)

    p = subparsers.add_parser("token", help="issue a bearer token (HS256, AMULET_SECRET_KEY)")
    p.add_argument("--subject", required=True, help="who the token is for")
    p.add_argument("--ttl", type=float, default=3600, help="seconds the token is valid (default 3600)")
    p.add_argument("--scope", action="append", choices=["predict", "metrics"], help="grant only this scope (repeatable)")
    p.set_defaults(func=_token)

    p = subparsers.add_parser("load", help="bounded load test of the service on the pooled HTTP client")
    p.add_argument("--url", default=None, help="a running service (default: start one on 127.0.0.1)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--image", default=None, help="image to send (default: one of the committed samples)")
    p.add_argument("--token", default=None, help="bearer token for --url (default: issued per client from the key)")
    p.add_argument("--cold", action="store_true", help="started service only: a one-entry image cache (every request misses)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_load)
