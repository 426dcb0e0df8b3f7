"""Settings: every ``AMULET_*`` variable, parsed and checked in one place.

Settings are read at the edge (the CLI, the service, a notebook's first cell) and
passed in; library code never reads ``os.environ`` itself. ``VARIABLES`` is the single
table of truth: ``.env.example`` and the README's table are checked against it by tests.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from amulet_lab.errors import ValidationError

__all__ = ["Settings", "Variable", "VARIABLES", "load_settings", "get_settings", "PROJECT_ROOT"]

PREFIX = "AMULET_"
#: The checkout (or install) root: ``data/`` and ``reports/`` live beside the package.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

_PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "secret", "your-secret-key", "your_secret_key", "replace-me", "xxx"}
)


@dataclasses.dataclass(frozen=True)
class Variable:
    """One ``AMULET_*`` variable: its field, type, default and meaning."""

    field: str
    kind: str  # "int", "float", "bool", "str", "choice", "optional_float", "optional_str"
    default: Any
    doc: str
    minimum: float | None = 0
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    @property
    def env(self) -> str:
        """The environment variable's name."""
        return PREFIX + self.field.upper()


VARIABLES: tuple[Variable, ...] = (
    # caching
    Variable("cache_max_size", "int", 104_857_600,
             "Byte bound of the classifier's prediction cache (0: no prediction cache).", 0, 17_179_869_184),
    Variable("cache_default_ttl", "float", 3600.0, "Time to live of a cached prediction, seconds.", 0.001, 2_592_000),
    # memory
    Variable("memory_warning_threshold", "float", 0.8, "Share of system memory in use that means 'warning'.", 0, 1),
    Variable("memory_critical_threshold", "float", 0.9, "Share of system memory in use that means 'critical'.", 0, 1),
    Variable("memory_budget_mb", "optional_float", None,
             "Optional RSS budget of this process, MB (empty: none); the service sizes its pixel and upload "
             "budgets from it.", 1, 1_048_576),
    Variable("cache_shrink_fraction", "float", 0.5, "Fraction of its entries a cache drops under memory pressure.", 0, 1),
    Variable("mmap_threshold", "int", 4_194_304,
             "Image files larger than this many bytes are memory-mapped, not read onto the heap.", 1, 1_073_741_824),
    # performance
    Variable("connection_pool_size", "int", 100, "Connections held by the async HTTP pool.", 1, 10_000),
    Variable("http_timeout", "float", 10.0, "Timeout of one HTTP request of the pool, seconds.", 0.001, 3600),
    Variable("chunk_size", "int", 8192, "Bytes read at a time when streaming files.", 1, 67_108_864),
    Variable("thread_pool_size", "int", 4, "Workers of each named thread pool (image decoding among them).", 1, 256),
    Variable("torch_threads", "int", 0, "Threads torch uses for inference (0: torch's own default).", 0, 256),
    # model and inference
    Variable("model_path", "optional_str", None, "Checkpoint to load (empty: the bundled default in data/models/)."),
    Variable("chromium", "optional_str", None,
             "Chromium executable of make ui-check (empty: /usr/bin/chromium); nothing else uses a browser."),
    Variable("band_reliable", "optional_float", None,
             "Confidence at or above which a prediction is 'reliable' (empty: the checkpoint's, else 0.9).", 0, 1),
    Variable("band_verify", "optional_float", None,
             "Confidence at or above which a prediction is 'verify', below it 'retake' (empty: the checkpoint's, "
             "else 0.7).", 0, 1),
    Variable("test_preprocess_delay_ms", "float", 0.0,
             "Benchmarks only: a delay the benchmark adds to each preprocessing, ms (seeds a known regression).",
             0, 10_000),
    # input limits
    Variable("max_upload_bytes", "int", 20_971_520, "Largest image file accepted, bytes.", 1, 1_073_741_824),
    Variable("max_image_side", "int", 12_000, "Longest image side accepted, pixels.", 1, 65_535),
    Variable("max_image_pixels", "int", 50_000_000, "Most pixels (width x height) accepted.", 1, 1_000_000_000),
    # service
    Variable("secret_key", "optional_str", None, "HS256 key for JWTs; required by the service unless AMULET_DEBUG=true."),
    Variable("require_auth", "bool", False, "Whether /predict and /metrics need a bearer token."),
    Variable("jwt_issuer", "str", "amulet-lab", "Issuer written into and required of tokens (not empty)."),
    Variable("jwt_audience", "str", "amulet-lab-api", "Audience written into and required of tokens (not empty)."),
    Variable("token_max_ttl_s", "float", 31_622_400.0,
             "Longest token lifetime issued and accepted, seconds (a token living longer is refused).", 1, 315_360_000),
    Variable("rate_limit_per_minute", "float", 120.0, "Requests a client may make per minute (token refill rate).",
             0.001, 1_000_000),
    Variable("rate_limit_burst", "int", 30, "Token bucket size: requests a client may make at once.", 1, 100_000),
    Variable("trust_forwarded_for", "bool", False, "Take the client address from X-Forwarded-For (behind a proxy only)."),
    # shared tier (Redis/Valkey)
    Variable("redis_url", "optional_str", None,
             "Redis or Valkey server of the shared prediction-cache tier and of the redis rate limit, e.g. "
             "redis://127.0.0.1:6379/0 (empty: off)."),
    Variable("redis_timeout_ms", "float", 50.0,
             "Connect and read timeout of one call to the Redis/Valkey server, ms (a slower server is skipped).",
             1, 10_000),
    Variable("redis_breaker_timeout_s", "float", 5.0,
             "Seconds the Redis/Valkey circuit breaker stays open after repeated failures before it probes again.",
             0.1, 3600),
    Variable("rate_limit_backend", "choice", "memory",
             "Where rate-limit buckets live: memory (per process) or redis (one bucket per client across replicas; "
             "needs AMULET_REDIS_URL; the local bucket while the server is down).", choices=("memory", "redis")),
    Variable("upload_timeout_s", "float", 30.0,
             "Deadline for receiving a whole request body, seconds (then 408).", 0.1, 3600),
    Variable("upload_idle_timeout_s", "float", 10.0,
             "Longest pause between two pieces of a request body, seconds (then 408).", 0.1, 600),
    Variable("max_connections", "int", 1024, "Most open client connections; more are answered 503 and closed.",
             1, 100_000),
    Variable("pixel_wait_s", "float", 10.0,
             "How long a request waits for the decoded-pixel budget, seconds (then 503).", 0, 600),
    Variable("batch_max_size", "int", 8,
             "Most photos in one batched forward pass of the service (1: no batching).", 1, 256),
    Variable("batch_max_wait_ms", "float", 5.0,
             "How long the service waits for more photos to fill a batch, ms.", 0, 1000),
    Variable("openapi", "bool", False, "Serve /openapi.json and /docs (also served when AMULET_DEBUG=true)."),
    # general
    Variable("debug", "bool", False,
             "Debug mode: allows a missing secret key, serves /docs and /openapi.json, logs at DEBUG level."),
    Variable("log_format", "choice", "text", "Log format of the amulet_lab logger: text or json.", choices=("text", "json")),
    Variable("log_level", "choice", "INFO", "Log level of the amulet_lab logger.",
             choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    Variable("reports_dir", "optional_str", None, "Where reports and reports/history live (empty: reports/ in the project)."),
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse(var: Variable, raw: str) -> Any:
    """Turn one raw string into the variable's typed value, or raise ValidationError."""
    text = raw.strip()

    def bad(why: str) -> ValidationError:
        return ValidationError(
            f"{var.env}={raw!r} is invalid: {why}. Fix it in the environment or .env (see .env.example).",
            field=var.env,
            value=raw,
        )

    if var.kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise bad("expected true or false")
    if var.kind in ("str", "optional_str"):
        if var.kind == "optional_str" and text == "":
            return None
        return text
    if var.kind == "choice":
        for choice in var.choices:
            if text.lower() == choice.lower():
                return choice
        raise bad(f"expected one of {', '.join(var.choices)}")
    if var.kind == "optional_float" and text == "":
        return None
    number: float
    try:
        number = int(text) if var.kind == "int" else float(text)
    except ValueError:
        raise bad("not a number" if var.kind != "int" else "not a whole number") from None
    _check(var, number, raw)
    return number


def _check(var: Variable, value: Any, raw: Any = None) -> None:
    """Raise ``ValidationError`` naming the variable unless ``value`` is in its range or choices."""
    shown = value if raw is None else raw

    def bad(why: str) -> ValidationError:
        return ValidationError(
            f"{var.env}={shown!r} is invalid: {why}. Fix it in the environment or .env (see .env.example).",
            field=var.env,
            value=shown,
        )

    if value is None:
        if not var.kind.startswith("optional"):
            raise bad("a value is required")
        return
    if var.kind == "choice" and value not in var.choices:
        raise bad(f"expected one of {', '.join(var.choices)}")
    if var.kind in ("int", "float", "optional_float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("not a number")
        if value != value or value in (float("inf"), float("-inf")):
            raise bad("not a finite number")
        if var.minimum is not None and value < var.minimum:
            raise bad(f"must be >= {var.minimum}")
        if var.maximum is not None and value > var.maximum:
            raise bad(f"must be <= {var.maximum}")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Typed, validated settings; build with ``load_settings()``."""

    cache_max_size: int = 104_857_600
    cache_default_ttl: float = 3600.0
    memory_warning_threshold: float = 0.8
    memory_critical_threshold: float = 0.9
    memory_budget_mb: float | None = None
    cache_shrink_fraction: float = 0.5
    mmap_threshold: int = 4_194_304
    connection_pool_size: int = 100
    http_timeout: float = 10.0
    chunk_size: int = 8192
    thread_pool_size: int = 4
    torch_threads: int = 0
    model_path: str | None = None
    chromium: str | None = None
    band_reliable: float | None = None
    band_verify: float | None = None
    test_preprocess_delay_ms: float = 0.0
    max_upload_bytes: int = 20_971_520
    max_image_side: int = 12_000
    max_image_pixels: int = 50_000_000
    secret_key: str | None = dataclasses.field(default=None, repr=False)
    require_auth: bool = False
    jwt_issuer: str = "amulet-lab"
    jwt_audience: str = "amulet-lab-api"
    token_max_ttl_s: float = 31_622_400.0
    rate_limit_per_minute: float = 120.0
    rate_limit_burst: int = 30
    trust_forwarded_for: bool = False
    redis_url: str | None = dataclasses.field(default=None, repr=False)  # may hold a password
    redis_timeout_ms: float = 50.0
    redis_breaker_timeout_s: float = 5.0
    rate_limit_backend: str = "memory"
    upload_timeout_s: float = 30.0
    upload_idle_timeout_s: float = 10.0
    max_connections: int = 1024
    pixel_wait_s: float = 10.0
    batch_max_size: int = 8
    batch_max_wait_ms: float = 5.0
    openapi: bool = False
    debug: bool = False
    log_format: str = "text"
    log_level: str = "INFO"
    reports_dir: str | None = None

    def __post_init__(self) -> None:
        for var in VARIABLES:  # also guards Settings(...) and replace(), not only load_settings()
            _check(var, getattr(self, var.field))
        if self.memory_warning_threshold >= self.memory_critical_threshold:
            raise ValidationError(
                "AMULET_MEMORY_WARNING_THRESHOLD must be below AMULET_MEMORY_CRITICAL_THRESHOLD "
                f"(got {self.memory_warning_threshold} >= {self.memory_critical_threshold}).",
                field="AMULET_MEMORY_WARNING_THRESHOLD",
                value=self.memory_warning_threshold,
            )
        for name in ("jwt_issuer", "jwt_audience"):
            if not getattr(self, name).strip():
                # An empty audience or issuer makes every token fail verification (a service nobody can use).
                raise ValidationError(f"AMULET_{name.upper()} must not be empty.", field=f"AMULET_{name.upper()}",
                                      value=getattr(self, name))
        if self.rate_limit_backend == "redis" and not self.redis_url:
            raise ValidationError("AMULET_RATE_LIMIT_BACKEND=redis needs AMULET_REDIS_URL (the server holding the "
                                  "buckets).", field="AMULET_RATE_LIMIT_BACKEND", value=self.rate_limit_backend)
        if self.band_verify is not None and self.band_reliable is not None and self.band_verify >= self.band_reliable:
            raise ValidationError(
                f"AMULET_BAND_VERIFY must be below AMULET_BAND_RELIABLE (got {self.band_verify} >= {self.band_reliable}).",
                field="AMULET_BAND_VERIFY",
                value=self.band_verify,
            )

    def require_secret_key(self) -> str:
        """The JWT secret; raises ``SecurityError`` when it is missing or a placeholder (unless debug)."""
        from amulet_lab.errors import SecurityError

        key = self.secret_key or ""
        if key.strip().lower() in _PLACEHOLDER_SECRETS or len(key) < 16:
            if self.debug:
                # Debug runs get a per-process key: tokens die with the process, nothing is accepted silently
                # across restarts.
                return _debug_secret()
            raise SecurityError(
                "AMULET_SECRET_KEY is missing, too short (< 16 chars) or a placeholder. Set it, e.g. "
                "`export AMULET_SECRET_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')`, "
                "or set AMULET_DEBUG=true for local experiments.",
                code="E_SECRET_KEY",
                severity="high",
            )
        return key

    @property
    def effective_log_level(self) -> str:
        """``DEBUG`` in debug mode, else ``log_level``."""
        return "DEBUG" if self.debug else self.log_level

    @property
    def reports_path(self) -> Path:
        """The reports folder (``reports_dir`` or ``reports/`` in the project)."""
        return Path(self.reports_dir) if self.reports_dir else PROJECT_ROOT / "reports"

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


@functools.lru_cache(maxsize=1)
def _debug_secret() -> str:
    import secrets

    return secrets.token_urlsafe(32)


def _read_dotenv(path: Path) -> dict[str, str]:
    """Parse a minimal ``.env`` file: KEY=VALUE lines, # comments, optional quotes."""
    values: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):]
        key, sep, value = line.partition("=")
        if not sep:
            raise ValidationError(f"{path}:{lineno}: expected KEY=VALUE, got {line!r}", field=str(path), value=line)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].strip()
        values[key.strip()] = value
    return values


def load_settings(environ: Mapping[str, str] | None = None, *, dotenv: str | Path | None = ".env") -> Settings:
    """Read ``AMULET_*`` variables from ``environ`` (default ``os.environ``) over an optional ``.env`` file."""
    if environ is not None and not isinstance(environ, Mapping):
        raise ValidationError(f"environ must be a mapping of names to strings, got {type(environ).__name__}",
                              field="environ", value=type(environ).__name__, code="E_CONFIG")
    if dotenv is not None and not isinstance(dotenv, (str, os.PathLike)):
        raise ValidationError(f"dotenv must be a path or None, got {dotenv!r}", field="dotenv", value=repr(dotenv),
                              code="E_CONFIG")
    env = dict(os.environ if environ is None else environ)
    merged: dict[str, str] = {}
    if dotenv is not None and Path(dotenv).is_file():
        try:
            found = _read_dotenv(Path(dotenv))
        except (OSError, UnicodeDecodeError) as exc:
            raise ValidationError(f"cannot read {dotenv}: {exc}", field=str(dotenv), value=str(dotenv),
                                  code="E_CONFIG") from exc
        merged.update({k: v for k, v in found.items() if k.startswith(PREFIX)})
    merged.update({k: v for k, v in env.items() if isinstance(k, str) and k.startswith(PREFIX)})
    known = {var.env: var for var in VARIABLES}
    values: dict[str, Any] = {}
    for name, raw in merged.items():
        var = known.get(name)
        if var is None:
            continue  # unknown AMULET_* names are tolerated (other tools may share the prefix)
        if not isinstance(raw, str):
            raise ValidationError(f"{name}={raw!r} is invalid: environment values are strings (write {str(raw)!r}).",
                                  field=name, value=raw)
        values[var.field] = _parse(var, raw)
    return Settings(**values)


_cached: Settings | None = None


def get_settings() -> Settings:
    """The process's settings, loaded once on first use."""
    global _cached
    if _cached is None:
        _cached = load_settings()
    return _cached


def _reset_settings_cache(settings: Settings | None = None) -> None:
    """Forget (or replace) the cached settings; for tests and notebooks that change the environment."""
    global _cached
    _cached = settings



def render_env_example(table: tuple[Variable, ...] = VARIABLES) -> str:
    """The text of ``.env.example``: every variable with its default and meaning."""
    lines = [
        "# amulet-lab settings. Copy to .env and edit; real environment variables win over .env.",
        "# Generated from amulet_lab.config.VARIABLES (python -m amulet_lab.config > .env.example).",
        "",
    ]
    for var in table:
        default = var.default
        if isinstance(default, bool):
            text = "true" if default else "false"
        elif default is None:
            text = ""
        else:
            text = str(default)
        lines.append(f"# {var.doc}")
        lines.append(f"{var.env}={text}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render_env_example(), end="")
