"""Re-composited training crops: the piece kept, its red background gone, seeded; training and CV use them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from amulet_lab.data.recomposite import RECOMPOSE_BACKGROUNDS, recomposite
from amulet_lab.errors import ValidationError

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


@pytest.fixture(scope="module")
def crop() -> Image.Image:
    """A sample crop: a synthetic piece on the plain background the training crops have."""
    path = sorted((SAMPLES / "phra_sivali").glob("*.jpg"))[0]
    with Image.open(path) as im:
        return im.convert("RGB")


def _border(arr: np.ndarray) -> np.ndarray:
    return np.concatenate([arr[:3].reshape(-1, 3), arr[-3:].reshape(-1, 3), arr[:, :3].reshape(-1, 3),
                           arr[:, -3:].reshape(-1, 3)]).astype(float)


def _best_match(frame: Image.Image, piece: Image.Image) -> float:
    """Mean absolute difference (grey, 0..255) of ``piece`` (RGBA, unscaled) at its best place in ``frame``."""
    f = np.asarray(frame.convert("L").reduce(2), float)
    p = np.asarray(piece.convert("L").reduce(2), float)
    m = np.asarray(piece.getchannel("A").reduce(2)) > 200
    best = np.inf
    for y in range(0, f.shape[0] - p.shape[0] + 1):
        for x in range(0, f.shape[1] - p.shape[1] + 1):
            best = min(best, float(np.abs(f[y:y + p.shape[0], x:x + p.shape[1]][m] - p[m]).mean()))
    return best


def test_the_background_changes_and_the_piece_stays(crop):
    from amulet_lab.data.composites import cut_out

    src = np.asarray(crop)
    piece = cut_out(crop)
    other = cut_out(Image.open(sorted((SAMPLES / "prok_bodhi_9_leaves").glob("*.jpg"))[0]).convert("RGB"))
    other = other.resize(piece.size)
    for i, background in enumerate(RECOMPOSE_BACKGROUNDS):
        out = recomposite(crop, seed=i, background=background)
        arr = np.asarray(out)
        assert out.mode == "RGB" and abs(out.width - out.height) <= 1
        # The plain background of the source is gone from the frame: its border colour is far from the old one.
        assert np.abs(_border(arr).mean(0) - _border(src).mean(0)).sum() > 25, background
        # The piece is in the frame, unscaled, under the print and phone looks; another piece is not.
        here, there = _best_match(out, piece), _best_match(out, other)
        assert here < 30 and here < 0.6 * there, (background, here, there)


def test_one_seed_one_crop_and_bad_arguments(crop):
    a, b = recomposite(crop, seed=7), recomposite(crop, seed=7)
    assert a.tobytes() == b.tobytes()
    assert recomposite(crop, seed=8).tobytes() != a.tobytes()
    with pytest.raises(ValidationError) as err:
        recomposite(crop, seed=1, background="moon")
    assert err.value.code == "E_COMPOSITE_ARGUMENT"
    with pytest.raises(ValidationError) as err:
        recomposite(np.zeros((8, 8, 3)), seed=1)
    assert err.value.code == "E_IMAGE_TYPE"


def test_the_fused_recipe_trains_on_copies_of_its_photos():
    """Two copies per photo, each tagged with its source photo (the fold it is held out with); the recipe trains."""
    from amulet_lab.data import load_dataset
    from amulet_lab.model.train import TrainConfig, _recomposed, fit
    from amulet_lab.model.train_config import BUNDLED_CONFIG

    assert BUNDLED_CONFIG["recomposed_copies"] == 0  # the synthetic stand-in stays as it was built
    with pytest.raises(ValidationError):
        TrainConfig(recomposed_copies=-1)
    splits = load_dataset(SAMPLES, val_fraction=0.0)
    samples = [s for s in splits.all if "front" in s.path.name][:12]
    cfg = TrainConfig(recomposed_copies=2)
    raw, source = _recomposed([s.path for s in samples], cfg, cfg.img_size)
    assert raw.shape == (24, 3, cfg.img_size, cfg.img_size) and raw.dtype == torch.uint8
    assert source.tolist() == [i for i in range(12) for _ in range(2)]
    res = fit([s.path for s in samples], [s.label for s in samples], [], [], 6, cfg, progress=False)
    assert res.unknown_stats["known_pass_rate"] > 0 and res.temperature > 0


@pytest.mark.slow
def test_a_class_left_out_of_training_comes_back_unknown(tmp_path):
    """leave_one_class_out on three generated classes: each left-out class is mostly flagged unknown."""
    from amulet_lab.data import load_dataset
    from amulet_lab.data.synth import synthesize
    from amulet_lab.model.evaluate import leave_one_class_out
    from amulet_lab.model.train import TrainConfig

    synthesize(tmp_path / "d", 6, 3, size=128, progress=False)
    splits = load_dataset(tmp_path / "d", val_fraction=0.0)
    keys = [label.key for label in splits.labels][:3]
    samples = [s for s in splits.all if s.label < 3]
    result = leave_one_class_out(samples, keys, config=TrainConfig(arch="features", img_size=128,
                                                                   recomposed_copies=0), progress=False)
    assert sorted(result["per_class"]) == sorted(keys)
    for row in result["per_class"].values():
        assert row["photos"] == 6 and 0.0 <= row["red_unknown_rate"] <= 1.0 and 0.0 <= row["recomposed_unknown_rate"] <= 1.0
    assert result["unknown_rate"] >= 0.4, result
    with pytest.raises(ValidationError) as err:
        leave_one_class_out(samples, keys[:2])
    assert err.value.code == "E_TOO_FEW_CLASSES"


def test_copies_are_for_the_fused_recipe_only():
    from amulet_lab.model.train import TrainConfig

    with pytest.raises(ValidationError) as err:
        TrainConfig(arch="features", recomposed_copies=2)
    assert err.value.field == "recomposed_copies"


def test_evaluate_cv_scores_recomposed_photos_from_the_command_line(capsys):
    """`amulet-lab evaluate CKPT DATA --cv K --recomposed`: the re-composited figures of the recipe, printed."""
    from amulet_lab.cli import main
    from amulet_lab.model.bundled import SYNTHETIC_CHECKPOINT

    assert main(["evaluate", str(SYNTHETIC_CHECKPOINT), str(SAMPLES), "--cv", "2", "--recomposed", "--arch",
                 "features", "--img-size", "64", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "recomposed_accuracy" in out and "recomposed_false_unknown_rate" in out
    # Copies are for the fused head only, also from the command line: a coded error, no traceback.
    assert main(["evaluate", str(SYNTHETIC_CHECKPOINT), str(SAMPLES), "--cv", "2", "--arch", "features",
                 "--recomposed-copies", "1", "--quiet"]) != 0
    assert "recomposed_copies" in capsys.readouterr().err
