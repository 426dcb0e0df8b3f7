"""``amulet-lab train | evaluate | train-default | predict``: the model's command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _config(args: argparse.Namespace, base: dict[str, Any] | None = None) -> Any:
    from amulet_lab.model import TrainConfig

    values = dict(base or {})
    for name in ("arch", "epochs", "seed", "img_size", "batch_size", "lr", "recomposed_copies", "feature_l2"):
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    known = set(TrainConfig.__dataclass_fields__)
    return TrainConfig(**{k: v for k, v in values.items() if k in known})


def _train(args: argparse.Namespace, settings: Any) -> int:
    from amulet_lab.model import train

    _threads(settings)
    ck = train(args.data_dir, out=args.out, config=_config(args), val_fraction=args.val_fraction,
               include_val=args.include_val, progress=not args.quiet, review=args.labels)
    meta = ck.metadata
    if "review" in meta:
        r = meta["review"]
        print(f"reviewed labels {r['csv']}: {r['rows']} row(s), {r['relabelled']} relabelled, {r['confirmed']} confirmed, "
              f"{r['added']} added, {r['left_out']} left out (not an amulet of these types), {r['missing']} gone")
    m = meta.get("metrics") or {}
    epochs = f", best epoch {meta['best_epoch']} of {meta['epochs_run']}" if meta["epochs_run"] else ""  # a CNN's only
    print(f"saved {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB) in {meta['train_seconds']:.0f} s, "
          f"{meta['n_train']} train / {meta['n_val']} val images{epochs}, T={ck.temperature:.3f}")
    if m:
        print(f"validation: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, top-2 {m['top2_accuracy']:.4f}, "
              f"ECE {m['ece']:.4f}")
    return 0


def _evaluate(args: argparse.Namespace, settings: Any) -> int:
    from amulet_lab.data import load_dataset
    from amulet_lab.files import atomic_write_text
    from amulet_lab.model import cross_validate, evaluate, format_metrics, load_checkpoint
    from amulet_lab.security import ImageLimits

    _threads(settings)
    ck = load_checkpoint(args.checkpoint)
    splits = load_dataset(args.data_dir, val_fraction=0.0)
    if args.cv:
        config = _config(args, ck.metadata.get("config"))
        keys = [lab.key for lab in splits.labels]
        result = cross_validate(splits.all, len(keys), keys, k=args.cv, seed=config.seed, config=config,
                                progress=not args.quiet, recomposed=args.recomposed)
        result["recipe"] = {k: v for k, v in vars(config).items()}
        title = f"{args.cv}-fold cross-validation of the recipe of {args.checkpoint} over {len(splits.all)} images"
    else:
        split = args.split
        if split == "auto":  # held-out data only when the folder is pre-split
            split = "val" if splits.val and not splits.test else "test" if splits.test else "all"
        with within_budget(settings.memory_budget_mb):
            result = evaluate(ck.path, splits, split=split, limits=ImageLimits.from_settings(settings))
        title = f"{args.checkpoint} on {args.data_dir} ({split}: {result['n']} images)"
    print(title)
    print(format_metrics(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


def _train_default(args: argparse.Namespace, settings: Any) -> int:
    from amulet_lab.model.bundled import train_real, train_synthetic

    _threads(settings)
    if args.synthetic:
        ck = train_synthetic(args.out, progress=not args.quiet)
    else:  # the real photos, or a coded error saying they are absent (never a silent fall-back)
        ck = train_real(args.data, args.out, progress=not args.quiet, scene=args.scene)
    from amulet_lab.model.card import model_card

    print(f"saved {ck.path} ({Path(ck.path).stat().st_size / 1e6:.2f} MB), {ck.metadata['train_seconds']:.0f} s "
          "of training (the final model)")
    print(model_card(ck.metadata).to_text())
    return 0


def _predict(args: argparse.Namespace, settings: Any) -> int:
    from amulet_lab.model import AmuletClassifier

    _threads(settings)
    clf = AmuletClassifier.from_settings(settings, args.checkpoint)
    if args.scene:
        return _print_scenes(clf, args)
    if args.back:
        if len(args.images) != 1:
            from amulet_lab.errors import ValidationError

            raise ValidationError("--back takes exactly one front image", field="images", value=len(args.images))
        pair = clf.predict_pair(args.images[0], args.back, top_k=args.top_k)
        results: list[dict[str, Any]] = [{"image": args.images[0], "back": args.back, **pair.to_dict()}]
        preds = [(f"{args.images[0]} + {args.back}", pair.combined, pair.agree)]
    else:
        with within_budget(settings.memory_budget_mb):
            batch = (clf.predict_batch(args.images, top_k=args.top_k) if len(args.images) > 1
                     else [clf.predict(args.images[0], top_k=args.top_k)])
        results = [{"image": img, **p.to_dict()} for img, p in zip(args.images, batch)]
        preds = [(img, p, None) for img, p in zip(args.images, batch)]
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=1))
        return 0
    from amulet_lab.model.prediction import UNKNOWN_TEXT

    for name, p, agree in preds:
        sides = "" if agree is None else (" (sides agree)" if agree else " (sides DISAGREE)")
        if p.is_unknown:  # no band: the closest class is only a hint
            print(f"{name}: {UNKNOWN_TEXT} (closest: {p.label} {p.thai_name}){sides}")
        else:
            print(f"{name}: {p.label} {p.thai_name} {p.confidence:.3f} [{p.confidence_band}]{sides}")
        for key, thai, prob in p.top_k[1:]:
            print(f"    {key} {thai} {prob:.3f}")
    return 0


def within_budget(budget_mb: float | None) -> Any:
    """A ``memory_limit_context`` holding this process under AMULET_MEMORY_BUDGET_MB for a batch (none: no limit)."""
    import contextlib

    from amulet_lab.errors import MemoryBudgetExceeded
    from amulet_lab.memory import memory_limit_context, rss_bytes

    if budget_mb is None:
        return contextlib.nullcontext()
    rss_mb = rss_bytes() / 2**20
    if rss_mb >= budget_mb:
        raise MemoryBudgetExceeded(f"this process already holds {rss_mb:.0f} MB, over AMULET_MEMORY_BUDGET_MB="
                                   f"{budget_mb:g}; raise the budget", peak_mb=rss_mb, budget_mb=budget_mb)
    return memory_limit_context(budget_mb - rss_mb)


def _print_scenes(clf: Any, args: argparse.Namespace) -> int:
    """``predict --scene``: every piece of each photo with its box, turn and answer (or JSON)."""
    from amulet_lab.errors import ValidationError
    from amulet_lab.model.prediction import UNKNOWN_TEXT

    if args.back:
        raise ValidationError("--scene classifies the pieces of each photo: --back does not apply", field="back",
                              value=args.back, code="E_SCENE_BACK")
    scenes = [(image, clf.predict_scene(image, top_k=args.top_k)) for image in args.images]
    if args.json:
        print(json.dumps([{"image": image, **s.to_dict()} for image, s in scenes], ensure_ascii=False, indent=1))
        return 0
    for image, s in scenes:
        print(f"{image}: {s.answer} ({len(s.pieces)} piece(s), {s.timings['total']:.0f} ms)")
        for i, piece in enumerate(s.pieces, 1):
            p = piece.prediction
            what = UNKNOWN_TEXT if p.is_unknown else f"{p.label} {p.thai_name} {p.confidence:.3f} [{p.confidence_band}]"
            print(f"    piece {i}: box {piece.box}, turned {piece.rotation} deg: {what}")
    return 0


def _model_card(args: argparse.Namespace, settings: Any) -> int:
    from amulet_lab.errors import ModelError
    from amulet_lab.model import default_checkpoint_path, load_checkpoint
    from amulet_lab.model.card import model_card

    path = args.checkpoint or default_checkpoint_path(settings.model_path)
    card = model_card(load_checkpoint(path).metadata)
    if card is None:
        raise ModelError(f"{path} has no model card (trained before cards); retrain it to get one",
                         code="E_MODEL_CARD_MISSING", context={"path": str(path)})
    print(json.dumps(card.to_dict(), ensure_ascii=False, indent=1) if args.json else card.to_text())
    return 0


def _threads(settings: Any) -> None:
    import torch

    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)


def _train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, help="maximum epochs (default: the recipe's)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--img-size", type=int, dest="img_size", help="square input side in pixels")
    parser.add_argument("--arch", choices=("tiny", "small", "ensemble", "features", "fused"),
                        help="architecture (default fused; the synthetic stand-in is an ensemble)")
    parser.add_argument("--batch-size", type=int, dest="batch_size", help="images per step")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--recomposed-copies", type=int, dest="recomposed_copies",
                        help="fused: also train on N copies of each photo re-composited on a page, wood or cloth")
    parser.add_argument("--feature-l2", type=float, dest="feature_l2", help="L2 of the linear head")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``evaluate``, ``train-default`` and ``predict``."""
    p = subparsers.add_parser("train", help="train a classifier on an image-folder dataset",
                              description="Train on DATA_DIR (class folders, or train/ val/ folders) and save one checkpoint file.")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file to write")
    p.add_argument("--val-fraction", type=float, default=0.2, dest="val_fraction",
                   help="validation share when DATA_DIR is not pre-split (default 0.2)")
    p.add_argument("--include-val", action="store_true", dest="include_val",
                   help="train on train+val (a CNN: the full epochs, no early stopping, T=1; features: calibrated out of fold, "
                        "given 10 or more images)")
    p.add_argument("--labels", metavar="CSV",
                   help="reviewed labels (path,sha256,label; the gallery writes them): a listed photo is trained as its "
                        "label, _unknown leaves it out; a photo changed since its review is refused (E_REVIEW_STALE)")
    _train_args(p)
    p.set_defaults(func=_train)

    p = subparsers.add_parser("evaluate", help="score a checkpoint on labelled data, or cross-validate its recipe",
                              description="Print and optionally write accuracy, macro_f1, top2_accuracy, ece, per_class, "
                                          "confusion_matrix (and pair_accuracy when a groups file pairs sides).")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--json", metavar="OUT", help="also write the metrics as JSON")
    p.add_argument("--split", default="auto", choices=("auto", "train", "val", "test", "all"),
                   help="which images to score (auto: val/ or test/ of a pre-split folder, else all)")
    p.add_argument("--cv", type=int, metavar="K", help="stratified K-fold CV of the checkpoint's recipe over all images")
    p.add_argument("--recomposed", action="store_true",
                   help="with --cv: also score each held-out photo re-composited on a page, wood and cloth")
    _train_args(p)
    p.set_defaults(func=_evaluate)

    p = subparsers.add_parser("train-default", help="rebuild the bundled model (data/models/amulet6.pt) from the real photos",
                              description="Cross-validate the default recipe on the real amulet6 photos (../shared/datasets/"
                                          "amulet6), train it on all of them and write data/models/amulet6.pt with its "
                                          "model card. --synthetic: rebuild data/models/amulet6-synth.pt from generated "
                                          "pieces instead (any machine; reproducible).")
    p.add_argument("--synthetic", action="store_true", help="rebuild the synthetic stand-in instead")
    p.add_argument("--scene", action="store_true",
                   help="rebuild data/models/amulet6-scene.pt, the pieces' model of predict_scene (re-composited copies)")
    p.add_argument("--data", metavar="DIR", help="the real photos (default ../shared/datasets/amulet6)")
    p.add_argument("--out", help="checkpoint to write (default data/models/amulet6.pt, or amulet6-synth.pt)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_train_default)

    p = subparsers.add_parser("model-card", help="what a checkpoint was trained on and how well it does",
                              description="Print the model card of CKPT (default: AMULET_MODEL_PATH or the bundled model).")
    p.add_argument("checkpoint", nargs="?", metavar="CKPT")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_model_card)

    p = subparsers.add_parser("predict", help="classify photos", description="Classify one or more photos.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--checkpoint", "--ckpt", dest="checkpoint", help="checkpoint (default: settings / bundled)")
    p.add_argument("--back", help="the back side of the (single) IMAGE: classify the pair")
    p.add_argument("--top-k", type=int, default=3, dest="top_k")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--scene", action="store_true",
                   help="find every amulet in each photo: each piece with its box, turn and answer")
    p.set_defaults(func=_predict)
