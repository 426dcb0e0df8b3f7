"""Training: the loss falls, runs are reproducible, augmentation, temperature scaling, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from amulet_lab.errors import ValidationError
from amulet_lab.images import PreprocessSpec
from amulet_lab.model import TrainConfig, fit, load_checkpoint
from amulet_lab.images import to_uint8_batch
from amulet_lab.model.train import augment, fit_temperature
from model_helpers import TINY_SIZE, tiny_checkpoint, tiny_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("synth"))


def _paths_labels(root):
    from amulet_lab.data import load_dataset

    splits = load_dataset(root, val_fraction=0.0)
    return [s.path for s in splits.train], [s.label for s in splits.train]


def test_loss_falls_on_generated_data(dataset):
    paths, labels = _paths_labels(dataset)
    cfg = TrainConfig(arch="tiny", img_size=TINY_SIZE, epochs=6, batch_size=16, lr=1e-2, seed=0, outlier_weight=0.0,
                      feature_views=2)
    result = fit(paths, labels, [], [], 6, cfg, progress=False)
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 6
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.05


def test_same_seed_same_weights(dataset, tmp_path):
    a = load_checkpoint(tiny_checkpoint(dataset, tmp_path / "a.pt", epochs=1, seed=5))
    b = load_checkpoint(tiny_checkpoint(dataset, tmp_path / "b.pt", epochs=1, seed=5))
    for (name, wa), wb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(wa, wb), name
    assert a.metadata["data_fingerprint"] == b.metadata["data_fingerprint"]
    assert a.metadata["seed"] == 5 and a.metadata["n_val"] > 0 and "accuracy" in a.metadata["metrics"]


def test_augment_keeps_shape_and_differs_per_draw():
    spec = PreprocessSpec(24)
    raw = torch.randint(0, 255, (3, 3, 24, 24), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    a, b = augment(raw, spec, gen), augment(raw, spec, gen)
    assert a.shape == (3, 3, 24, 24) and torch.isfinite(a).all()
    assert not torch.equal(a, b)
    again = augment(raw, spec, torch.Generator().manual_seed(0))
    assert torch.equal(a, again)


def test_temperature_scaling_softens_overconfident_logits():
    torch.manual_seed(0)
    targets = torch.randint(0, 3, (200,))
    logits = torch.randn(200, 3)
    logits[torch.arange(200), targets] += 1.0  # right 60-70 % of the time ...
    t = fit_temperature(logits * 10, targets)  # ... but scaled to look certain
    assert t > 3
    assert fit_temperature(torch.empty(0, 3), torch.empty(0, dtype=torch.long)) == 1.0


def test_fit_validates_inputs():
    with pytest.raises(ValidationError):
        fit([], [], [], [], 6, progress=False)
    with pytest.raises(ValidationError):
        fit(["a.jpg"], [0, 1], [], [], 6, progress=False)
    with pytest.raises(ValidationError):
        TrainConfig(epochs=0)


def test_to_uint8_batch_shape(dataset):
    paths, _ = _paths_labels(dataset)
    out = to_uint8_batch(paths[:3], 20)
    assert out.shape == (3, 3, 20, 20) and out.dtype == torch.uint8


def test_cli_train_evaluate_predict(dataset, tmp_path, capsys):
    from amulet_lab.cli import main

    ck = tmp_path / "m.pt"
    rc = main(["train", str(dataset), "--out", str(ck), "--arch", "tiny", "--epochs", "1", "--img-size", "32",
               "--batch-size", "16", "--quiet"])
    assert rc == 0 and ck.is_file()
    out_json = tmp_path / "metrics.json"
    assert main(["evaluate", str(ck), str(dataset), "--json", str(out_json)]) == 0
    m = json.loads(out_json.read_text())
    for key in ("accuracy", "macro_f1", "top2_accuracy", "ece", "per_class", "confusion_matrix"):
        assert key in m
    assert "pair_accuracy" in m  # the synthetic set's groups.json pairs front and back
    image = next(dataset.glob("*/*.jpg"))
    capsys.readouterr()
    assert main(["predict", str(image), "--checkpoint", str(ck), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    from amulet_lab.data import load_labels

    assert printed[0]["label"] in {lab.key for lab in load_labels()}
    assert set(printed[0]["timings"]) == {"lookup", "decode", "preprocess", "infer", "postprocess", "total"}
    assert main(["predict", "/nonexistent.jpg", "--checkpoint", str(ck)]) == 1


def test_cli_train_default_recipe_is_the_fused_model(dataset, tmp_path, capsys):
    """The default recipe: pretrained crop features + hand features in one head, bands chosen out of fold; the
    checkpoint keeps only the head (the backbone is named by package and hash)."""
    from amulet_lab.cli import main
    from amulet_lab.model import AmuletClassifier, load_checkpoint
    from amulet_lab.model.backbone import WEIGHTS_SHA256

    ck = tmp_path / "f.pt"
    assert main(["train", str(dataset), "--out", str(ck), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "best epoch" not in said and "val images, T=" in said  # no epochs to speak of: a linear fit
    loaded = load_checkpoint(ck)
    assert loaded.arch == "fused" and loaded.metadata["config"]["feature_l2"] == 0.01
    assert loaded.arch_kwargs["backbone_sha256"] == WEIGHTS_SHA256
    assert not any(k.startswith("backbone") for k in loaded.model.state_dict())  # the head only
    assert ck.stat().st_size < 400_000 and set(loaded.metadata["bands"]) == {"reliable", "verify"}
    pred = AmuletClassifier(loaded, cache=False).predict(sorted(dataset.glob("*/*.jpg"))[0])
    assert pred.label and pred.distance is not None


def test_bundled_model_recipe_pins_every_training_field():
    """make train-default must not follow later changes of TrainConfig's defaults (tuned for real photos)."""
    import dataclasses

    from amulet_lab.model.train import BUNDLED_CONFIG
    from amulet_lab.model.bundled import SYNTHETIC_CHECKPOINT

    assert set(BUNDLED_CONFIG) == {f.name for f in dataclasses.fields(TrainConfig)}
    stored = load_checkpoint(SYNTHETIC_CHECKPOINT).metadata["config"]
    # Fields added since the checkpoint was built are pinned at the value that does nothing, so it stays valid.
    added_off = {"recomposed_copies": 0, "recomposed_weight": 1.0}
    assert {k: v for k, v in BUNDLED_CONFIG.items() if k not in added_off or k in stored} == stored
    assert all(BUNDLED_CONFIG[k] == v for k, v in added_off.items())


def test_unknown_arch_is_refused_by_the_config():
    with pytest.raises(ValidationError) as info:
        TrainConfig(arch="resnet")
    assert info.value.code == "E_ARCH"


def test_out_of_fold_folds_keep_a_pieces_photos_together():
    from amulet_lab.model.calibration import fold_ids

    labels = torch.tensor([0] * 10 + [1] * 10)
    groups = [f"piece{i // 2}" for i in range(20)]  # front and back of ten pieces
    fold = fold_ids(labels, groups, 5, seed=0)
    assert all(fold[i] == fold[i + 1] for i in range(0, 20, 2))
    assert sorted(torch.bincount(fold).tolist()) == [4] * 5  # balanced: two pieces a fold
    assert torch.bincount(fold[:10]).tolist() == [2] * 5  # and stratified: one piece of each class


def test_features_without_val_are_calibrated_out_of_fold(dataset):
    """Out of fold, the model is less sure than on its own training images: the fitted T is larger."""
    from amulet_lab.data import load_dataset
    splits = load_dataset(dataset, val_fraction=0.0)
    images, labels = [s.path for s in splits.train], [s.label for s in splits.train]
    cfg = TrainConfig(arch="features", img_size=64, feature_views=1, seed=0)
    res = fit(images, labels, [], [], 6, cfg, train_groups=[s.group for s in splits.train], progress=False)
    spec = PreprocessSpec(64)
    y = torch.tensor(labels)
    with torch.no_grad():
        feats = res.model.head.extract(spec.normalise(to_uint8_batch(images, 64).float() / 255.0))
    in_sample = fit_temperature(torch.log_softmax(res.model.head.fc((feats - res.model.head.feat_mean) / res.model.head.feat_std), 1), y)
    assert res.temperature > in_sample  # a calibration on the training images themselves would give about in_sample


def test_cross_validate_scores_every_image_once(dataset):
    from amulet_lab.data import load_dataset
    from amulet_lab.model import cross_validate

    splits = load_dataset(dataset, val_fraction=0.0)
    keys = [lab.key for lab in splits.labels]
    cfg = TrainConfig(arch="features", img_size=64, feature_views=1)
    result = cross_validate(splits.all, len(keys), keys, k=2, seed=0, config=cfg, progress=False)
    assert result["k"] == 2 and len(result["folds"]) == 2
    assert sum(f["n"] for f in result["folds"]) == len(splits.all)
    assert 0.0 <= result["accuracy"] <= 1.0 and result["accuracy"] > 1 / 6  # better than chance on the stand-in
    assert set(result["pooled"]) >= {"accuracy", "macro_f1", "top2_accuracy", "ece", "confusion_matrix"}


def test_cli_predict_holds_a_memory_budget(tmp_path, monkeypatch, capsys):
    """A batch under AMULET_MEMORY_BUDGET_MB runs in memory_limit_context; a budget already spent is a coded error."""
    from amulet_lab.cli import main
    from amulet_lab.data import SAMPLES_DIR
    from amulet_lab.memory import rss_bytes

    photos = [str(p) for p in sorted(SAMPLES_DIR.glob("*/*.jpg"))[:3]]
    roomy = rss_bytes() / 2**20 + 2000
    monkeypatch.setenv("AMULET_MEMORY_BUDGET_MB", f"{roomy:.0f}")
    assert main(["predict", *photos, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    from amulet_lab.config import _reset_settings_cache

    _reset_settings_cache()  # the CLI reads the environment once per process
    monkeypatch.setenv("AMULET_MEMORY_BUDGET_MB", "10")  # below what the process already holds
    assert main(["predict", *photos]) == 1
    assert "E_MEMORY_BUDGET" in capsys.readouterr().err
