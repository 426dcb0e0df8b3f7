"""The model card a checkpoint carries: the CLI prints it, /health and the app show its headline."""

from __future__ import annotations

import json

import pytest

from amulet_lab.errors import ModelError
from amulet_lab.model import load_checkpoint, save_checkpoint
from amulet_lab.model.card import AMULET6_LICENCE, AMULET6_SOURCE, ModelCard, model_card
from model_helpers import untrained_tiny_checkpoint

CARD = ModelCard(
    dataset="amulet6", real_photos=True, files_per_class={"a": 20, "b": 30}, data_fingerprint="f" * 64,
    source=AMULET6_SOURCE, licence=AMULET6_LICENCE, recipe={"arch": "features"},
    evaluation="5-fold cross-validation, out of fold", figures={"accuracy": 0.9312, "ece": 0.04},
    created="2026-12-02", amulet_lab_version="0.1.0",
)


@pytest.fixture(scope="module")
def carded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("card")
    bare = untrained_tiny_checkpoint(folder / "bare.pt")
    ck = load_checkpoint(bare)
    ck.metadata["model_card"] = CARD.to_dict()
    return save_checkpoint(ck, folder / "carded.pt"), bare


def test_headline_text_and_round_trip():
    assert CARD.headline() == "trained on 50 real photos of 2 classes · cross-validated accuracy 0.93"
    assert ModelCard.from_dict(json.loads(json.dumps(CARD.to_dict()))) == CARD
    text = CARD.to_text()
    assert "Suphakrit038/Amulet-Ai" in text and "MIT" in text and "accuracy" in text and "0.931" in text
    with pytest.raises(ModelError) as err:
        ModelCard.from_dict({"dataset": "x"})
    assert err.value.code == "E_MODEL_CARD"
    assert model_card({}) is None
    synthetic = ModelCard(**{**CARD.to_dict(), "real_photos": False, "evaluation": "held-out synthetic pieces"})
    assert synthetic.headline().startswith("trained on 50 synthetic stand-ins") and "held-out accuracy" in synthetic.headline()


def test_cli_prints_the_card_and_refuses_a_checkpoint_without_one(carded, capsys):
    from amulet_lab.cli import main

    path, bare = carded
    assert main(["model-card", str(path)]) == 0
    assert capsys.readouterr().out.startswith(CARD.headline())
    assert main(["model-card", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == CARD.to_dict()
    assert main(["model-card", str(bare)]) == 1
    assert "E_MODEL_CARD_MISSING" in capsys.readouterr().err


def test_health_and_the_app_show_the_headline(carded, settings):
    from fastapi.testclient import TestClient

    from amulet_lab.model import AmuletClassifier
    from amulet_lab.service import create_app
    from amulet_lab.widgets import ClassifierApp

    clf = AmuletClassifier.from_settings(settings, carded[0])
    assert clf.card == CARD and clf.model_status()["headline"] == CARD.headline()
    health = TestClient(create_app(settings.replace(debug=True), clf)).get("/health").json()
    assert health["model_status"]["headline"] == CARD.headline()  # public: no token needed
    app = ClassifierApp(clf)
    assert CARD.headline() in app.model_html.value and "never seen a real amulet" not in app.model_html.value
    bare = ClassifierApp(AmuletClassifier.from_settings(settings, carded[1]))
    assert "no model card" in bare.model_html.value


def test_the_readme_quotes_the_bundled_model_card():
    """The README's model section states the committed model's headline and figures, as its card has them."""
    from amulet_lab.config import PROJECT_ROOT
    from amulet_lab.model.bundled import REAL_CHECKPOINT

    card = model_card(load_checkpoint(REAL_CHECKPOINT).metadata)
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    assert card.headline() in readme
    f = card.figures
    row = (f"| default recipe | **{f['accuracy']:.3f} ± {f['accuracy_std']:.3f}** | {f['macro_f1']:.3f} | "
           f"{f['top2_accuracy']:.3f} | {f['ece']:.3f} | {f['reliable_accuracy']:.3f}, {f['reliable_coverage']:.3f} | "
           f"{f['false_unknown_rate']:.3f} | {f['probe_caught_rate']:.3f} |")
    assert row in readme, row
