"""The OpenAPI description is complete and true: schemathesis with all checks over it finds nothing."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings as hsettings

from amulet_lab.service import create_app

KEY = "o" * 32


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from amulet_lab.data import SAMPLES_DIR
    from amulet_lab.model import TrainConfig, train

    out = tmp_path_factory.mktemp("model") / "tiny.pt"
    config = TrainConfig(arch="tiny", img_size=32, epochs=1, batch_size=8, min_epochs=1, patience=1, feature_views=2)
    train(SAMPLES_DIR, out=out, config=config, progress=False)
    return out


def _app(tiny_checkpoint=None, **changes):
    from amulet_lab.config import load_settings
    from amulet_lab.model import AmuletClassifier

    s = load_settings({}, dotenv=None).replace(secret_key=KEY, rate_limit_burst=100_000,
                                               rate_limit_per_minute=1_000_000, openapi=True, **changes)
    classifier = AmuletClassifier.from_settings(s, tiny_checkpoint) if tiny_checkpoint else None
    return create_app(s, classifier)


def test_openapi_is_served_only_when_asked(tiny_checkpoint):
    from amulet_lab.config import load_settings

    plain = load_settings({}, dotenv=None).replace(secret_key=KEY)
    assert TestClient(create_app(plain)).get("/openapi.json").status_code == 404
    assert TestClient(create_app(plain.replace(debug=True))).get("/openapi.json").status_code == 200
    schema = TestClient(_app()).get("/openapi.json").json()
    predict = schema["paths"]["/predict"]["post"]
    body = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["front"] and set(body["properties"]) == {"front", "back"}
    assert [p["name"] for p in predict["parameters"]] == ["top_k", "scene"]
    assert {"200", "400", "401", "403", "408", "413", "415", "422", "429", "431", "500", "503"} <= set(predict["responses"])
    assert predict["responses"]["415"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorEnvelope"}
    assert set(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}


#: A multipart body the schema calls valid need not hold a decodable photo (a schema cannot say "these bytes
#: are a JPEG"): /predict refuses such bytes by content, 400/413/415 in the envelope, and that is right.
CONFIG = """
[[operations]]
include-path = "/predict"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "413", "415"]
"""


@pytest.fixture(scope="module")
def api_schema(tiny_checkpoint):
    from schemathesis.config import SchemathesisConfig

    return schemathesis.openapi.from_asgi("/openapi.json", _app(tiny_checkpoint),
                                          config=SchemathesisConfig.from_str(CONFIG))


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_all_checks(api_schema, mode):
    """Every check schemathesis has (server errors, status codes, content types, headers, response schemas,
    negative data rejected, positive data accepted ...) over a bounded number of examples per operation.

    Driven through hypothesis directly: schemathesis's pytest plugin does not run under pytest 9.
    """
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable

    from schemathesis.checks import CHECKS, load_all_checks
    from schemathesis.generation import GenerationMode

    load_all_checks()
    checks = CHECKS.get_all()
    failures = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
        @hsettings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                   database=None)
        def check(case):
            case.call_and_validate(checks=checks)

        try:
            check()
        except Unsatisfiable:
            assert mode == "negative", operation.label  # no parameter or body: nothing to make invalid
        except Exception as exc:  # noqa: BLE001 - every operation is tried, the failures reported together
            failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
