"""Sub-commands of the service: ``serve``, ``token`` and ``load``."""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
from collections.abc import Iterator

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
    from amulet_lab.bench.load import check_load_args, run_load, sample_images
    from amulet_lab.files import existing_file

    warmup_s = 0.5 if args.url is None else 0.0
    # Checked before anything starts: a bad argument must not cost a server start-up first.
    check_load_args(args.duration, args.clients, warmup_s)
    if not 0 <= args.stall <= 1000:
        from amulet_lab.errors import ValidationError

        raise ValidationError("--stall must be in [0, 1000]", field="stall", value=args.stall)
    images = [existing_file(args.image, field="image_path").read_bytes()] if args.image else sample_images()
    if args.distinct:
        from amulet_lab.bench.scenarios import distinct_images

        # Enough new photos that no request of the run repeats one (the prediction cache never answers).
        images = distinct_images(images, max(len(images), int(args.distinct)), seed=0)
    run = dict(duration_s=args.duration, clients=args.clients, images=images, warmup_s=warmup_s, stall=args.stall)
    if args.url is not None:
        result = run_load(args.url, tokens=_client_tokens(args.token, args.clients, settings), **run)
    else:
        batching = {"AMULET_BATCH_MAX_SIZE": str(args.batch_max_size)} if args.batch_max_size else {}
        with _service_for_load(settings, args.clients, cold_cache=args.cold, extra_env=batching) as (url, tokens):
            result = run_load(url, tokens=tokens, **run)
    # After the run, never before it: a classifier left in this process (its decode pool, torch's spinning
    # OpenMP threads) took CPU from the server: 15.6 req/s against 25.3 without it, 16 clients, same photos.
    baseline = _batch_baseline(settings, images) if args.baseline else None
    summary = result.to_dict()
    if baseline is not None:
        summary["predict_batch_images_per_s"] = round(baseline, 3)
        summary["share_of_predict_batch"] = round(result.throughput_rps / baseline, 3) if baseline else None
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(result.to_text())
        if baseline is not None:
            print(f"  predict_batch in one process: {baseline:.1f} images/s; the service reached "
                  f"{summary['share_of_predict_batch']:.0%} of it")
    return 0 if result.passed else 1


def _batch_baseline(settings: Settings, images: list[bytes], *, seconds: float = 5.0) -> float:
    """Images per second of ``predict_batch`` (batches of 16, no prediction cache) on ``images`` in this process."""
    import time

    from amulet_lab.model import AmuletClassifier

    clf = AmuletClassifier.from_settings(settings, cache=False)
    clf.predict_batch(images[:16], batch_size=16)  # warm-up: lazy initialisation is not throughput
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = [images[(done + i) % len(images)] for i in range(64)]
        clf.predict_batch(chunk, batch_size=16)
        done += len(chunk)
    return done / (time.perf_counter() - start)


def _client_tokens(token: str | None, clients: int, settings: Settings) -> list[str | None] | None:
    """The tokens for a given service: ``--token`` for every client, else one per client signed with the key."""
    if token:
        return [token]
    if settings.secret_key:
        from amulet_lab.service.auth import issue_token

        return [issue_token(f"load-{i}", 3600, settings) for i in range(clients)]
    return None


@contextlib.contextmanager
def _service_for_load(settings: Settings, clients: int, *, cold_cache: bool = False,
                      extra_env: dict[str, str] | None = None) -> Iterator[tuple[str, list[str | None]]]:
    """A service in a child process for one load run: (its URL, one token per client), stopped afterwards.

    It gets a fresh secret key and a rate limit the clients stay under; ``cold_cache`` shrinks its image
    cache to one entry, so the rotating sample images miss it and every request pays for decoding,
    preprocessing and inference.
    """
    from amulet_lab.service.auth import issue_token
    from amulet_lab.service.server import ServerProcess

    env = {
        "AMULET_SECRET_KEY": secrets.token_urlsafe(32),
        "AMULET_DEBUG": "false",
        "AMULET_REQUIRE_AUTH": "true",
        # Every client has its own bucket; the limit sits well above what one client can send, so the
        # run measures the service, not the limiter (the limiter has its own tests).
        "AMULET_RATE_LIMIT_PER_MINUTE": "600000",
        "AMULET_RATE_LIMIT_BURST": "10000",
        "AMULET_LOG_LEVEL": "WARNING",
        **({"AMULET_MODEL_PATH": settings.model_path} if settings.model_path else {}),
        **({"AMULET_CACHE_MAX_SIZE": "0"} if cold_cache else {}),  # 0: no prediction cache
        **(extra_env or {}),
    }
    client_settings = settings.replace(secret_key=env["AMULET_SECRET_KEY"])
    tokens: list[str | None] = [issue_token(f"load-{i}", 3600, client_settings) for i in range(clients)]
    with ServerProcess(env, wait_ready=True, startup_timeout=120.0) as server:
        yield server.url, tokens


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
    p.add_argument("--cold", action="store_true", help="started service only: no prediction cache (AMULET_CACHE_MAX_SIZE=0: every request is inferred)")
    p.add_argument("--distinct", type=int, default=0, metavar="N",
                   help="send N distinct photos made from the samples (no request is a repeat; e.g. 2000)")
    p.add_argument("--stall", type=int, default=0, metavar="N",
                   help="keep N stalled uploads open beside the clients (slow-client attack; e.g. 64)")
    p.add_argument("--batch-max-size", type=int, default=0, metavar="N",
                   help="started service only: AMULET_BATCH_MAX_SIZE (1: no batching; default: the setting)")
    p.add_argument("--baseline", action="store_true",
                   help="first time predict_batch on the same photos in this process and report the service's share")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_load)
