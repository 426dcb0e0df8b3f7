"""JWT issue and verify: expiry, signature, audience, issuer, algorithm, scopes."""

from __future__ import annotations

import time

import jwt
import pytest

from amulet_lab.errors import SecurityError, ValidationError
from amulet_lab.service.auth import bearer_token, issue_token, verify_token

KEY = "k" * 32


@pytest.fixture
def auth_settings(settings):
    return settings.replace(secret_key=KEY)


def test_round_trip(auth_settings):
    token = issue_token("alice", 60, auth_settings)
    claims = verify_token(token, auth_settings)
    assert claims.subject == "alice"
    assert claims.allows("predict") and claims.allows("metrics")
    assert claims.expires_at == pytest.approx(time.time() + 60, abs=2)


def test_expired_token_is_refused(auth_settings):
    token = issue_token("alice", 10, auth_settings, now=lambda: time.time() - 3600)
    with pytest.raises(SecurityError) as info:
        verify_token(token, auth_settings)
    assert info.value.code == "E_AUTH_EXPIRED"


def test_wrongly_signed_token_is_refused(auth_settings):
    token = issue_token("alice", 60, auth_settings.replace(secret_key="x" * 32))
    with pytest.raises(SecurityError) as info:
        verify_token(token, auth_settings)
    assert info.value.code == "E_AUTH_INVALID"
    assert "signature" in info.value.message


def test_wrong_audience_and_issuer_are_refused(auth_settings):
    other_aud = issue_token("alice", 60, auth_settings.replace(jwt_audience="someone-else"))
    with pytest.raises(SecurityError, match="audience"):
        verify_token(other_aud, auth_settings)
    other_iss = issue_token("alice", 60, auth_settings.replace(jwt_issuer="evil"))
    with pytest.raises(SecurityError, match="issuer"):
        verify_token(other_iss, auth_settings)


def test_alg_none_and_missing_claims_are_refused(auth_settings):
    unsigned = jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, None, algorithm="none")
    with pytest.raises(SecurityError):
        verify_token(unsigned, auth_settings)
    no_exp = jwt.encode(
        {"sub": "a", "iat": int(time.time()), "iss": "amulet-lab", "aud": "amulet-lab-api"}, KEY, algorithm="HS256"
    )
    with pytest.raises(SecurityError):
        verify_token(no_exp, auth_settings)
    with pytest.raises(SecurityError):
        verify_token("not.a.token", auth_settings)


def test_scopes_are_carried(auth_settings):
    claims = verify_token(issue_token("bob", 60, auth_settings, scopes=["predict"]), auth_settings)
    assert claims.allows("predict") and not claims.allows("metrics")


def test_issue_validates_input_and_needs_a_real_key(settings, auth_settings):
    with pytest.raises(ValidationError):
        issue_token("", 60, auth_settings)
    with pytest.raises(ValidationError):
        issue_token("alice", 0, auth_settings)
    with pytest.raises(SecurityError):
        issue_token("alice", 60, settings.replace(secret_key="changeme"))


def test_bearer_header_parsing():
    assert bearer_token(None) is None
    assert bearer_token("Bearer abc") == "abc"
    with pytest.raises(SecurityError):
        bearer_token("Basic dXNlcjpwYXNz")
    with pytest.raises(SecurityError):
        bearer_token("Bearer ")
