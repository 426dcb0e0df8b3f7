"""The amulet classifier: architectures, training, evaluation, checkpoints and inference.

A heavy module (it imports torch): ``import amulet_lab`` does not load it.
"""

from amulet_lab.model.arch import ARCHITECTURES, AmuletNet, build_model
from amulet_lab.model.checkpoint import Checkpoint, load_checkpoint, make_checkpoint, save_checkpoint
from amulet_lab.model.answers import Answer, PredictionCache, SharedAnswers
from amulet_lab.model.classifier import AmuletClassifier, default_checkpoint_path
from amulet_lab.model.prediction import PairPrediction, Prediction, confidence_band
from amulet_lab.model.explain import Explanation
from amulet_lab.model.evaluate import cross_validate, evaluate, format_metrics, metrics
from amulet_lab.model.train import TrainConfig, fit, train
from amulet_lab.model.unknown import UnknownRule

__all__ = [
    "AmuletClassifier",
    "Answer",
    "PredictionCache",
    "SharedAnswers",
    "Prediction",
    "PairPrediction",
    "Explanation",
    "default_checkpoint_path",
    "confidence_band",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "make_checkpoint",
    "train",
    "fit",
    "TrainConfig",
    "evaluate",
    "cross_validate",
    "metrics",
    "format_metrics",
    "build_model",
    "AmuletNet",
    "ARCHITECTURES",
    "UnknownRule",
]
