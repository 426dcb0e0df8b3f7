"""JWT bearer tokens (pyjwt, HS256): issue them and check them.

A token carries ``sub``, ``iat``, ``exp``, ``iss``, ``aud`` and ``scope`` (space-separated,
by default ``"predict metrics"``). Verification insists on all of them, on HS256 only
(an ``alg: none`` or RS256 token is refused), on the configured issuer and audience, and on a lifetime
within ``AMULET_TOKEN_MAX_TTL_S`` (a token issued elsewhere with ``exp`` far in the future is refused).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable

import jwt

from amulet_lab.config import Settings, get_settings
from amulet_lab.errors import SecurityError, ValidationError

__all__ = ["Claims", "issue_token", "verify_token", "bearer_token", "DEFAULT_SCOPES"]

ALGORITHM = "HS256"
DEFAULT_SCOPES: tuple[str, ...] = ("predict", "metrics")
_LEEWAY_S = 5.0  # clock skew tolerated between issuer and service
_MAX_TOKEN_CHARS = 8192  # a real token is a few hundred characters; the header cap bounds it anyway


@dataclasses.dataclass(frozen=True)
class Claims:
    """The checked contents of a token."""

    subject: str
    scopes: frozenset[str]
    expires_at: float

    def allows(self, scope: str) -> bool:
        """Whether the token grants ``scope``."""
        return scope in self.scopes


def issue_token(
    subject: str,
    ttl_s: float = 3600,
    settings: Settings | None = None,
    *,
    scopes: Iterable[str] = DEFAULT_SCOPES,
    now: Callable[[], float] = time.time,
) -> str:
    """A signed HS256 token for ``subject`` valid ``ttl_s`` seconds."""
    settings = settings or get_settings()
    if not isinstance(subject, str) or not subject.strip() or len(subject) > 200:
        raise ValidationError("subject must be a non-empty string of at most 200 characters.", field="subject", value=subject)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not 0 < ttl_s <= settings.token_max_ttl_s:
        raise ValidationError(f"ttl_s must be in (0, {settings.token_max_ttl_s:g}] seconds (AMULET_TOKEN_MAX_TTL_S).",
                              field="ttl_s", value=ttl_s)
    scope_list = sorted({str(s) for s in scopes})
    issued = now()
    payload = {
        "sub": subject.strip(),
        "iat": int(issued),
        "exp": int(issued + ttl_s),
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "scope": " ".join(scope_list),
    }
    return jwt.encode(payload, settings.require_secret_key(), algorithm=ALGORITHM)


def verify_token(token: str, settings: Settings | None = None, *, now: Callable[[], float] = time.time) -> Claims:
    """The claims of a valid token; ``SecurityError`` (E_AUTH_EXPIRED / E_AUTH_INVALID) otherwise."""
    settings = settings or get_settings()
    if not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS:
        raise SecurityError("The token is not valid (too long).", code="E_AUTH_INVALID", severity="medium")
    try:
        payload = jwt.decode(
            token,
            settings.require_secret_key(),
            algorithms=[ALGORITHM],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=_LEEWAY_S,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise SecurityError("The token has expired.", code="E_AUTH_EXPIRED", severity="low") from None
    except jwt.InvalidAudienceError:
        raise SecurityError("The token is not meant for this service (audience).", code="E_AUTH_INVALID", severity="medium") from None
    except jwt.InvalidIssuerError:
        raise SecurityError("The token was not issued by this service (issuer).", code="E_AUTH_INVALID", severity="medium") from None
    except jwt.InvalidSignatureError:
        raise SecurityError("The token's signature is not valid.", code="E_AUTH_INVALID", severity="high") from None
    except jwt.InvalidTokenError as exc:
        # Malformed, missing claims, wrong algorithm ...: name the kind, not the token.
        raise SecurityError(f"The token is not valid ({type(exc).__name__}).", code="E_AUTH_INVALID", severity="medium") from None
    exp, iat = payload.get("exp"), payload.get("iat")
    if not isinstance(exp, (int, float)) or not isinstance(iat, (int, float)) or isinstance(exp, bool):
        raise SecurityError("The token's exp and iat must be numbers.", code="E_AUTH_INVALID", severity="medium")
    limit = settings.token_max_ttl_s + _LEEWAY_S
    if exp - iat > limit or exp - now() > limit or iat - now() > _LEEWAY_S:
        raise SecurityError(
            f"The token lives longer than this service accepts ({settings.token_max_ttl_s:g} s) or was issued in the "
            "future.", code="E_AUTH_INVALID", severity="medium")
    subject = payload.get("sub")
    if not isinstance(subject, str) or not subject:
        raise SecurityError("The token has no subject.", code="E_AUTH_INVALID", severity="medium")
    scope = payload.get("scope", "")
    scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
    return Claims(subject=subject, scopes=scopes, expires_at=float(payload["exp"]))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None when absent; ``SecurityError`` when malformed."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise SecurityError("Authorization must be 'Bearer <token>'.", code="E_AUTH_INVALID", severity="low")
    return token.strip()
