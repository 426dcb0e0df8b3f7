"""Architectures, hand-made features, checkpoints (round trip, corruption, labels) and metrics."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from amulet_lab.errors import ModelError, ValidationError
from amulet_lab.images import PreprocessSpec
from amulet_lab.model import (
    ARCHITECTURES,
    build_model,
    load_checkpoint,
    make_checkpoint,
    metrics,
    save_checkpoint,
)
from amulet_lab.model.checkpoint import project_labels
from amulet_lab.model.evaluate import expected_calibration_error, pair_accuracy
from amulet_lab.model.features import FEATURE_DIM, FEATURE_GROUPS, HandFeatures
from amulet_lab.model.unknown import UnknownRule, make_probes, normalised_entropy


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_arch_gives_logits_of_the_right_shape(arch):
    torch.manual_seed(0)
    model = build_model(arch, 6).eval()
    x = torch.randn(3, 3, 48, 48)
    with torch.inference_mode():
        out = model(x)
    assert out.shape == (3, 6) and torch.isfinite(out).all()


def test_build_model_rejects_unknown_arch_and_bad_classes():
    with pytest.raises(ValidationError) as err:
        build_model("resnet9000", 6)
    assert err.value.code == "E_ARCH"
    with pytest.raises(ValidationError):
        build_model("tiny", 1)


def test_hand_features_are_finite_and_see_the_silhouette():
    spec = PreprocessSpec(64)
    x = torch.zeros(2, 3, 64, 64)  # mid-grey background (normalised 0)
    x[0, :, 16:48, 16:48] = 1.5  # a bright square
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    x[1, :, ((yy - 32) ** 2 + (xx - 32) ** 2) < 16**2] = 1.5  # a bright disc
    feats = HandFeatures(spec.mean, spec.std)(x)
    assert feats.shape == (2, FEATURE_DIM) and torch.isfinite(feats).all()
    # shape block: share, aspect, extent ...: the square fills its box, the disc about pi/4 of it
    extent_index = FEATURE_DIM - FEATURE_GROUPS["shape"] + 2
    assert feats[0, extent_index] > 0.95 and 0.7 < feats[1, extent_index] < 0.85


def _piece(size: int, centre: tuple[int, int], radius: int, stripes: str) -> torch.Tensor:
    """A normalised image: a striped disc (vertical or horizontal relief) on a flat background."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) < radius**2
    along = (xx if stripes == "vertical" else yy) - (centre[1] if stripes == "vertical" else centre[0])
    relief = torch.where((along * 4 // radius) % 2 == 0, 1.6, 0.9)
    x = torch.full((1, 3, size, size), -0.4)
    x[0, :, inside] = relief[inside]
    return x


def test_relief_features_follow_the_piece_not_its_place_or_size_in_the_photo():
    spec = PreprocessSpec(128)
    extract = HandFeatures(spec.mean, spec.std)
    hog = slice(0, FEATURE_GROUPS["hog"])
    a = extract(_piece(128, (64, 64), 40, "vertical"))[0, hog]
    moved = extract(_piece(128, (44, 80), 26, "vertical"))[0, hog]  # smaller and off-centre
    other = extract(_piece(128, (64, 64), 40, "horizontal"))[0, hog]
    same, different = F.cosine_similarity(a, moved, 0), F.cosine_similarity(a, other, 0)
    assert same > 0.9 and same > different + 0.2, (float(same), float(different))


def _checkpoint(arch: str = "tiny", size: int = 32):
    torch.manual_seed(1)
    model = build_model(arch, 6)
    return make_checkpoint(model, arch=arch, arch_kwargs={}, labels=project_labels(), spec=PreprocessSpec(size),
                           temperature=1.7, unknown=UnknownRule(0.4, 0.8), metadata={"seed": 1, "metrics": {"accuracy": 0.5}})


def test_checkpoint_round_trip_is_bit_identical(tmp_path):
    ck = _checkpoint("features", 48)  # holds the feature scaler buffers too
    path = save_checkpoint(ck, tmp_path / "m.pt")
    loaded = load_checkpoint(path)
    x = torch.randn(4, 3, 48, 48)
    with torch.inference_mode():
        assert torch.equal(ck.model.eval()(x), loaded.model(x))
    assert loaded.temperature == 1.7 and loaded.unknown.to_dict() == {"min_confidence": 0.4, "max_entropy": 0.8, "max_distance": None}
    assert loaded.spec == PreprocessSpec(48) and [d["key"] for d in loaded.labels] == [d["key"] for d in project_labels()]
    assert loaded.metadata["seed"] == 1 and "amulet_lab_version" in loaded.metadata
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


def test_truncated_checkpoint_raises_corrupt(tmp_path):
    path = save_checkpoint(_checkpoint(), tmp_path / "m.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError) as err:
        load_checkpoint(path)
    assert err.value.code == "E_CHECKPOINT_CORRUPT" and str(path) in err.value.message


def test_garbage_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(ModelError) as err:
        load_checkpoint(junk)
    assert err.value.code == "E_CHECKPOINT_CORRUPT"
    with pytest.raises(ModelError) as err:
        load_checkpoint(tmp_path / "absent.pt")
    assert err.value.code == "E_CHECKPOINT_MISSING"


def test_other_torch_file_and_other_version_raise_format(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    with pytest.raises(ModelError) as err:
        load_checkpoint(other)
    assert err.value.code == "E_CHECKPOINT_FORMAT"
    payload = _checkpoint().to_payload()
    payload["format_version"] = 99
    future = tmp_path / "future.pt"
    torch.save(payload, future)
    with pytest.raises(ModelError) as err:
        load_checkpoint(future)
    assert err.value.code == "E_CHECKPOINT_FORMAT" and "99" in err.value.message


def test_labels_that_do_not_match_the_project_raise(tmp_path):
    payload = _checkpoint().to_payload()
    payload["labels"] = list(reversed(payload["labels"]))
    path = tmp_path / "swapped.pt"
    torch.save(payload, path)
    with pytest.raises(ModelError) as err:
        load_checkpoint(path)
    assert err.value.code == "E_CHECKPOINT_LABELS"
    assert load_checkpoint(path, expected_labels=None).labels[0]["key"] == payload["labels"][0]["key"]


@pytest.mark.parametrize("labels", ["abc", [], [["key", "x"]], [{1: "x", "key": "a"}], [{"thai": "x"}]])
def test_malformed_labels_raise_format(tmp_path, labels):
    payload = _checkpoint().to_payload()
    payload["labels"] = labels
    path = tmp_path / "bad_labels.pt"
    torch.save(payload, path)
    with pytest.raises(ModelError) as err:
        load_checkpoint(path, expected_labels=None)
    assert err.value.code == "E_CHECKPOINT_FORMAT"


def test_corrupt_checkpoint_that_vanishes_still_reports_corrupt(tmp_path, monkeypatch):
    path = tmp_path / "gone.pt"
    path.write_bytes(b"not a torch file")

    def load_then_vanish(*args, **kwargs):
        path.unlink()
        raise RuntimeError("invalid header")

    monkeypatch.setattr(torch, "load", load_then_vanish)
    with pytest.raises(ModelError) as err:
        load_checkpoint(path)
    assert err.value.code == "E_CHECKPOINT_CORRUPT" and err.value.context["bytes"] is None


def test_weights_that_do_not_fit_the_arch_raise(tmp_path):
    payload = _checkpoint().to_payload()
    payload["arch"] = "small"
    path = tmp_path / "mismatch.pt"
    torch.save(payload, path)
    with pytest.raises(ModelError) as err:
        load_checkpoint(path)
    assert err.value.code == "E_CHECKPOINT_WEIGHTS"


def test_checkpoint_with_code_is_refused_by_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "amulet-lab-checkpoint", "obj": PreprocessSpec(32)}, path)  # an arbitrary object
    with pytest.raises(ModelError) as err:
        load_checkpoint(path)
    assert err.value.code == "E_CHECKPOINT_CORRUPT"


def test_metrics_on_a_known_case():
    keys = ["a", "b", "c"]
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.2, 0.7, 0.1]])
    m = metrics(probs, [0, 1, 2, 1], keys)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["top2_accuracy"] == pytest.approx(1.0)
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert m["per_class"]["b"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert 0 <= m["ece"] <= 1
    with pytest.raises(ValidationError):
        metrics(probs, [0, 1], keys)


def test_ece_is_zero_when_confidence_matches_accuracy():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, torch.tensor([0, 1])) == pytest.approx(0.0)
    assert expected_calibration_error(probs, torch.tensor([1, 0])) == pytest.approx(1.0)


def test_pair_accuracy_combines_sides():
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    out = pair_accuracy(probs, [0, 0, 1, 1], ["p1", "p1", "p2", "p2"])
    assert out == {"pairs": 2, "pair_accuracy": 1.0}
    assert pair_accuracy(probs, [0, 0, 1, 1], [None, None, "x", "y"]) is None


def test_unknown_rule_and_probes():
    uniform = torch.full((1, 6), 1 / 6)
    sure = torch.tensor([[0.95, 0.01, 0.01, 0.01, 0.01, 0.01]])
    rule = UnknownRule(0.5, 0.7)
    assert bool(rule(uniform)[0]) and not bool(rule(sure)[0])
    assert float(normalised_entropy(uniform)[0]) == pytest.approx(1.0)
    fitted, stats = UnknownRule.fit(sure.repeat(10, 1), uniform.repeat(4, 1))
    assert stats["known_pass_rate"] == 1.0 and stats["probe_reject_rate"] == 1.0
    probes = make_probes(12, 32, seed=0)
    assert probes.shape == (12, 32, 32, 3) and probes.dtype.name == "uint8"
    assert (make_probes(12, 32, seed=0) == probes).all()
