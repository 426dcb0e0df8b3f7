"""The Train tab: a folder of photos in, a cross-validated model with its card out, and the Classify tab switched to it.

``TrainPanel`` owns its widgets (``.widget``) and is driven as the browser drives it: type the folder into
``panel.folder`` (Enter shows its counts and a thumbnail strip per class), choose ``panel.arch`` and ``panel.cv``,
press ``panel.train_button``; the progress bar moves after each fold and after the final model, with the elapsed
time beside it. Then it shows the cross-validated figures, a confusion matrix, a reliability diagram and the
misclassified photos (each photo scored by a model that never saw it), and writes the checkpoint with its model card
(atomically). ``panel.use_button`` hands the new classifier to the app (``ClassifierApp.use_classifier``).

The training itself is ``model.train_folder.train_folder``: the recipe ``amulet-lab train-default`` runs.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from amulet_lab.errors import AmuletError, ValidationError
from amulet_lab.widgets._html import _WRAP, _img_html, _placeholder, _thumbnail, english_name

__all__ = ["TrainPanel", "ARCH_CHOICES", "DEFAULT_ARCH"]

log = logging.getLogger("amulet_lab.widgets")

#: The architectures of ``amulet-lab train --arch``, in the words the dropdown shows.
ARCH_CHOICES: dict[str, str] = {
    "features": "features: hand-made features, a linear head (the quickest; 0.86 on amulet6)",
    "fused": "fused: the default recipe, pretrained + hand features (0.93 on amulet6, 1.5 min there)",
    "ensemble": "ensemble: features + a small CNN trained from scratch (slower)",
    "small": "small: a CNN from scratch",
    "tiny": "tiny: a very small CNN (for tests)",
}
#: The Train tab's default: the quickest (no pretrained backbone to run), for a first look on a laptop; the CLI's
#: default, ``fused``, is the more accurate (amulet6, 5 folds, 2 cores: 87 s in this tab, README).
DEFAULT_ARCH = "features"
_STRIP = 8  # thumbnails per class in the folder's strip
_STRIP_PX = 64
_CARD_PX = 96
_SHOWN_WRONG = 24
_FIGURE_PX = 600


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


class TrainPanel:
    """Choose a folder, see it, train with a progress bar, read the out-of-fold results, save, use in Classify.

    ``state`` holds what is shown (status, folder, counts, arch, cv, metrics, misclassified, checkpoint, headline,
    seconds, error); ``run`` is the last ``TrainRun``. ``on_use(classifier)`` is called by the Use button (the app's
    ``use_classifier``; None: no button); ``template`` is a classifier whose image limits and prediction cache the
    new one shares. ``recipe`` overrides ``TrainConfig`` fields besides ``arch`` (e.g. ``{"img_size": 64}``).
    """

    def __init__(self, *, on_use: Callable[[Any], Any] | None = None, template: Any = None,
                 out_dir: str | Path = "models", recipe: dict[str, Any] | None = None) -> None:
        import ipywidgets as w

        if on_use is not None and not callable(on_use):
            raise ValidationError("on_use must be callable", field="on_use", value=type(on_use).__name__)
        if recipe is not None and (not isinstance(recipe, dict) or "arch" in recipe):
            raise ValidationError("recipe must be a dict of TrainConfig fields other than arch", field="recipe",
                                  value=repr(recipe)[:80], code="E_TRAIN_RECIPE")
        self.on_use = on_use
        self.template = template
        self.out_dir = Path(out_dir)
        self.recipe = dict(recipe or {})
        self.run: Any = None
        self.state: dict[str, Any] = {"status": "waiting for a folder"}
        self._splits: Any = None

        self.folder = w.Text(placeholder="folder of <class>/*.jpg (or train/ val/ <class>/*.jpg); Enter shows it",
                             continuous_update=False, layout=w.Layout(width="420px"))
        self.show_button = w.Button(description="Show folder", icon="folder-open")
        self.labels = w.Text(placeholder="review CSV of path,sha256,label (empty: the folder's review.csv, if any)",
                             continuous_update=False, layout=w.Layout(width="420px"))
        self.arch = w.Dropdown(options=[(text, key) for key, text in ARCH_CHOICES.items()], value=DEFAULT_ARCH,
                               description="model", layout=w.Layout(width="560px"))
        self.cv = w.BoundedIntText(value=5, min=2, max=10, description="CV folds", layout=w.Layout(width="160px"))
        self.out = w.Text(placeholder=f"checkpoint to write (empty: {self.out_dir}/<folder>-<model>.pt)",
                          layout=w.Layout(width="420px"))
        self.train_button = w.Button(description="Train", button_style="primary", icon="play")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="training", layout=w.Layout(width="420px"))
        self.elapsed = w.HTML()
        self.status = w.HTML("<i>Type a folder of photos and press Enter to see it, then press <b>Train</b>.</i>")
        self.folder_html = w.HTML(layout=w.Layout(width="100%"))
        self.metrics_html = w.HTML()
        self.confusion_html = w.HTML(_placeholder("the confusion matrix appears here after training",
                                                  width=_FIGURE_PX, height=80))
        self.reliability_html = w.HTML(_placeholder("the reliability diagram appears here after training",
                                                    width=_FIGURE_PX, height=80))
        self.misclassified_html = w.HTML(layout=w.Layout(width="100%"))
        self.saved_html = w.HTML()
        self.use_button = w.Button(description="Use in Classify", icon="check", disabled=True,
                                   tooltip="classify with this model in the Classify and Gallery tabs",
                                   layout=w.Layout(display=None if on_use else "none"))

        self.folder.observe(lambda ch: self._safely(lambda: self.show_folder(ch["new"])), names="value")
        self.show_button.on_click(lambda _b: self._safely(lambda: self.show_folder(self.folder.value)))
        self.train_button.on_click(lambda _b: self._safely(lambda: self.train(self.folder.value)))
        self.use_button.on_click(lambda _b: self._safely(self.use))
        self.widget = w.VBox([
            w.HTML("<b>Train a model on your own photos</b>: each photo is scored by a model that never saw it "
                   "(cross-validation), then the final model learns from all of them."),
            w.HBox([self.folder, self.show_button]),
            self.labels,
            w.HBox([self.arch, self.cv]),
            w.HBox([self.out, self.train_button]),
            w.HBox([self.progress, self.elapsed]),
            self.status, self.folder_html, self.metrics_html,
            w.HBox([self.confusion_html, self.reliability_html], layout=w.Layout(flex_flow="row wrap")),
            self.misclassified_html, w.HBox([self.saved_html, self.use_button]),
        ], layout=w.Layout(width="100%"))

    def __repr__(self) -> str:
        st = self.state
        return (f"TrainPanel(status={st.get('status')!r}, photos={sum((st.get('counts') or {}).values())}, "
                f"checkpoint={st.get('checkpoint')!r})")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # ---- actions -------------------------------------------------------------------------
    def _safely(self, action: Callable[[], Any]) -> None:
        """Run a button action; our own errors are shown in the panel with their code, anything else propagates."""
        try:
            action()
        except AmuletError as exc:
            self.state = {**self.state, "status": "error", "error": exc.code, "message": exc.message}
            self.status.value = (f"<span style='color:#c62828;{_WRAP}'>⚠ {html.escape(exc.message)} "
                                 f"<code>{html.escape(exc.code)}</code></span>")
            log.info("train panel: %s", exc.code)

    def _review_csv(self, root: Path) -> Path | None:
        """The review CSV to train with: the one typed, else the folder's ``review.csv`` when there is one."""
        from amulet_lab.widgets.review import REVIEW_FILE

        typed = str(self.labels.value or "").strip()
        if typed:
            return Path(typed).expanduser()
        default = root / REVIEW_FILE
        return default if default.is_file() else None

    def show_folder(self, folder: str | Path) -> Any:
        """Read ``folder`` (class folders, or train/ val/ test/ splits of them): counts and a thumbnail strip per class."""
        from amulet_lab.data import load_dataset

        text = str(folder or "").strip()
        self._splits = None  # a new folder starts afresh: nothing of the previous one stays on show
        self._clear_results()
        self.folder_html.value = ""
        self.progress.value, self.progress.bar_style, self.elapsed.value = 0, "", ""
        self.state = {"status": "reading the folder", "folder": text}
        if not text:
            raise ValidationError("type the folder of photos first", field="folder", value="", code="E_NO_FOLDER")
        root = Path(text).expanduser()
        review = self._review_csv(root)
        splits = load_dataset(root, val_fraction=0.0, review=review)
        counts = {label.key: n for label in splits.labels if (n := sum(1 for s in splits.all if s.key == label.key))}
        per_split = {name: sum(row.values()) for name, row in splits.counts().items() if sum(row.values())}
        presplit = any((Path(splits.root) / name).is_dir() for name in ("train", "val", "test"))
        layout = "splits " + ", ".join(f"{name}/" for name in per_split) if presplit else "class folders"
        self._splits = splits
        self.state = {"status": "folder shown", "folder": str(splits.root), "counts": counts, "layout": layout,
                      "splits": per_split, "review": splits.review}
        rows = []
        for label in splits.labels:
            photos = [s.path for s in splits.all if s.key == label.key]
            if not photos:
                continue
            strip = "".join(self._thumb(p, _STRIP_PX) for p in photos[:_STRIP])
            more = f"<span style='color:#777;font-size:11px'> +{len(photos) - _STRIP} more</span>" \
                if len(photos) > _STRIP else ""
            rows.append(f"<div style='margin:4px 0'><b>{html.escape(label.english)}</b> "
                        f"<span style='color:#777'>({html.escape(label.key)})</span>: {len(photos)} photo(s)"
                        f"<div style='display:flex;flex-wrap:wrap;gap:3px;align-items:center'>{strip}{more}</div></div>")
        missing = [label.english for label in splits.labels if label.key not in counts]
        note = (f"<p style='color:#ef6c00'>No photos of: {html.escape(', '.join(missing))} (the model learns "
                "nothing of these).</p>") if missing else ""
        reviewed = splits.review or {}
        said = (f"<p style='{_WRAP}'>Labels from the review <code>{html.escape(str(review))}</code>: "
                + ", ".join(f"{v} {k}" for k, v in reviewed.items() if isinstance(v, int) and v) + ".</p>"
                ) if review is not None else ""
        self.folder_html.value = (f"<p style='{_WRAP}'><b>{sum(counts.values())} photos</b> of {len(counts)} classes in "
                                  f"<code>{html.escape(str(splits.root))}</code> ({html.escape(layout)})</p>"
                                  + said + note + "".join(rows))
        self.status.value = "<i>Folder read. Choose the model and the folds, then press <b>Train</b>.</i>"
        return splits

    def _thumb(self, path: Path, px: int) -> str:
        try:
            return _img_html(_thumbnail(path.read_bytes(), px), "image/jpeg", alt=path.name, max_width=px)
        except (AmuletError, OSError):
            return _placeholder("no preview", width=px, height=px)

    def _out_path(self, root: Path, arch: str) -> Path:
        from amulet_lab.model.bundled import REAL_CHECKPOINT, SCENE_CHECKPOINT, SYNTHETIC_CHECKPOINT

        text = self.out.value.strip()
        path = Path(text).expanduser() if text else self.out_dir / f"{root.name}-{arch}.pt"
        path = path.resolve()
        if path.suffix != ".pt":
            raise ValidationError(f"the checkpoint file should end in .pt: {path}", field="out", value=str(path),
                                  code="E_TRAIN_OUT")
        if path.is_dir():
            raise ValidationError(f"{path} is a folder, not a checkpoint file", field="out", value=str(path),
                                  code="E_TRAIN_OUT")
        if path in (REAL_CHECKPOINT.resolve(), SCENE_CHECKPOINT.resolve(), SYNTHETIC_CHECKPOINT.resolve()):
            raise ValidationError(f"{path} is a bundled model: write your own elsewhere (make train-default "
                                  "rebuilds the bundled ones)", field="out", value=str(path), code="E_TRAIN_OUT_BUNDLED")
        return path

    def train(self, folder: str | Path | None = None, *, out: str | Path | None = None, arch: str | None = None,
              cv: int | None = None, **recipe: Any) -> Any:
        """Train on ``folder`` (None: the one typed) with ``arch`` and ``cv`` folds (None: the panel's choices), write
        the checkpoint to ``out`` (None: the one typed, else ``out_dir/<folder>-<arch>.pt``) and show the results.

        ``recipe`` overrides ``TrainConfig`` fields for this run (over the panel's ``recipe``). Returns the ``TrainRun``.
        """
        from amulet_lab.model.bundled import AMULET6_DIR
        from amulet_lab.model.card import AMULET6_LICENCE, AMULET6_SOURCE
        from amulet_lab.model.train import TrainConfig
        from amulet_lab.model.train_folder import train_folder

        if folder is not None:
            self.folder.value = str(folder)  # shows it (the observer) when it changed
        if arch is not None:
            if arch not in ARCH_CHOICES:
                raise ValidationError(f"unknown model {arch!r}; choose from {', '.join(ARCH_CHOICES)}", field="arch",
                                      value=arch, code="E_ARCH")
            self.arch.value = arch
        if cv is not None:
            if isinstance(cv, bool) or not isinstance(cv, int) or not self.cv.min <= cv <= self.cv.max:
                raise ValidationError(f"cv must be a whole number from {self.cv.min} to {self.cv.max}", field="cv",
                                      value=cv, code="E_KFOLD_K")
            self.cv.value = cv
        if out is not None:
            self.out.value = str(out)
        splits = self._splits if self._splits is not None and self.state.get("status") == "folder shown" and \
            self.state.get("folder") == str(Path(self.folder.value.strip()).expanduser()) else None
        if splits is None:
            splits = self.show_folder(self.folder.value)
        self._clear_results()
        arch, k = self.arch.value, int(self.cv.value)
        config = TrainConfig(arch=arch, **{**self.recipe, **recipe})
        target = self._out_path(Path(splits.root), arch)
        amulet6 = Path(splits.root).resolve() == AMULET6_DIR.resolve()
        self.progress.max, self.progress.value, self.progress.bar_style = k + 1, 0, ""
        self.state = {**self.state, "status": "training", "arch": arch, "cv": k}
        self.status.value = (f"<i>Training {html.escape(arch)} with {k}-fold cross-validation, then the final model "
                             f"on all photos…</i>")
        start = time.perf_counter()

        def step(done: int, total: int, what: str) -> None:
            self.progress.value = done
            self.elapsed.value = f"{html.escape(what)} done · {_seconds(time.perf_counter() - start)} elapsed"

        self.elapsed.value = "0 s elapsed"
        self.train_button.disabled = True
        try:
            run = train_folder(splits, out=target, config=config, k=k, on_step=step,
                               source=AMULET6_SOURCE if amulet6 else None, licence=AMULET6_LICENCE if amulet6 else None,
                               command="the notebook's Train tab (amulet_lab.widgets.TrainPanel)")
        except AmuletError:
            self.progress.bar_style = "danger"
            raise
        finally:
            self.train_button.disabled = False
        self.progress.bar_style = "success"
        self.run = run
        self._show_results(run)
        return run

    def _clear_results(self) -> None:
        self.run = None
        self.metrics_html.value = self.misclassified_html.value = self.saved_html.value = ""
        self.confusion_html.value = _placeholder("the confusion matrix appears here after training", width=_FIGURE_PX,
                                                 height=80)
        self.reliability_html.value = _placeholder("the reliability diagram appears here after training",
                                                   width=_FIGURE_PX, height=80)
        self.use_button.disabled = True

    # ---- results -------------------------------------------------------------------------
    def confusion_figure(self) -> Any:
        """The out-of-fold confusion matrix of the last run (English names on the axes)."""
        from amulet_lab.model.figures import confusion_figure

        run = self._need_run()
        keys = [d["key"] for d in run.checkpoint.labels]  # the matrix's order
        present = [i for i, key in enumerate(keys) if key in run.counts]  # classes without photos: no row
        matrix = run.cv["pooled"]["confusion_matrix"]
        return confusion_figure([[matrix[i][j] for j in present] for i in present],
                                [english_name(keys[i]) for i in present])

    def reliability_figure(self) -> Any:
        """The reliability diagram of the last run's out-of-fold answers."""
        from amulet_lab.model.figures import reliability_figure

        preds = self._need_run().predictions
        return reliability_figure([p["confidence"] for p in preds], [p["predicted"] == p["target"] for p in preds])

    def _need_run(self) -> Any:
        if self.run is None:
            raise ValidationError("nothing trained yet: press Train first", field="run", code="E_NOT_TRAINED")
        return self.run

    def _show_results(self, run: Any) -> None:
        from amulet_lab.bench.plots import figure_to_png
        from amulet_lab.display import html_table

        cv = run.cv
        metrics = {
            "accuracy": f"{cv['accuracy']:.3f} ± {cv['accuracy_std']:.3f}",
            "macro-F1": f"{cv['macro_f1']:.3f}",
            "top-2 accuracy": f"{cv['top2_accuracy']:.3f}",
            "ECE (pooled)": f"{cv['pooled']['ece']:.3f}",
            "'reliable' band: accuracy, share": (f"{cv['reliable_accuracy']:.3f}, {cv['reliable_coverage']:.3f}"
                                                 if cv["reliable_accuracy"] == cv["reliable_accuracy"] else
                                                 f"none reliable, share {cv['reliable_coverage']:.3f}"),
            "photos wrongly called unknown": f"{cv['false_unknown_rate']:.3f}",
            "generated non-amulets caught": f"{cv['probe_caught_rate']:.3f}",
        }
        seconds = {"cross-validation": _seconds(run.seconds_cv), "final model": _seconds(run.seconds_final),
                   "total": _seconds(run.seconds)}
        per_class = "".join(
            f"<tr><td>{html.escape(english_name(key))}</td><td style='text-align:right'>{row['support']}</td>"
            f"<td style='text-align:right'>{row['recall']:.2f}</td><td style='text-align:right'>{row['precision']:.2f}"
            f"</td></tr>" for key, row in cv["pooled"]["per_class"].items() if row["support"])
        self.metrics_html.value = (
            f"<h4 style='margin:6px 0'>Out of fold ({run.k}-fold cross-validation, {sum(run.counts.values())} photos)"
            f"</h4><div style='display:flex;flex-wrap:wrap;gap:24px'>"
            f"{html_table(metrics, caption='each photo scored by a model that never saw it')}"
            f"<table><caption>per class</caption><tr><th>class</th><th>photos</th><th>recall</th><th>precision</th></tr>"
            f"{per_class}</table>{html_table(seconds, caption='training time')}</div>")
        figures = {"confusion": self.confusion_figure(), "reliability": self.reliability_figure()}
        for name, fig in figures.items():
            png = figure_to_png(fig, dpi=90)
            target = self.confusion_html if name == "confusion" else self.reliability_html
            target.value = _img_html(png, "image/png", alt=fig.axes[0].get_title(), max_width=_FIGURE_PX)
        wrong = run.misclassified
        cards = "".join(self._wrong_card(p) for p in wrong[:_SHOWN_WRONG])
        more = f"<p style='color:#777'>and {len(wrong) - _SHOWN_WRONG} more</p>" if len(wrong) > _SHOWN_WRONG else ""
        self.misclassified_html.value = (
            f"<h4 style='margin:6px 0'>Misclassified out of fold: {len(wrong)} of {len(run.predictions)}</h4>" +
            (f"<div style='display:grid;grid-template-columns:repeat(auto-fill, minmax({_CARD_PX + 40}px, 1fr));"
             f"gap:8px'>{cards}</div>{more}" if wrong else "<p>None: every photo was answered right.</p>"))
        size = run.path.stat().st_size / 1e6
        self.saved_html.value = (f"<div style='{_WRAP}'>Saved <code>{html.escape(str(run.path))}</code> ({size:.2f} MB) "
                                 f"with its model card: <b>{html.escape(run.card.headline())}</b></div>")
        self.use_button.disabled = False
        self.state = {**self.state, "status": "trained", "metrics": {k: cv[k] for k in (
            "accuracy", "accuracy_std", "macro_f1", "top2_accuracy", "reliable_accuracy", "reliable_coverage")}
            | {"ece": cv["pooled"]["ece"]}, "misclassified": len(wrong), "checkpoint": str(run.path),
            "headline": run.card.headline(), "seconds": round(run.seconds, 2), "figures": list(figures), "used": False}
        self.status.value = (f"<span style='color:#2e7d32'>Trained in {_seconds(run.seconds)}.</span>" +
                             (" Press <b>Use in Classify</b> to classify with it." if self.on_use else ""))

    def _wrong_card(self, p: dict[str, Any]) -> str:
        path = Path(p["path"])
        return (f"<div style='min-width:0;overflow:hidden;padding:4px;border:1px solid #e0e0e0;border-radius:6px;"
                f"font-size:11px;line-height:1.25'>{self._thumb(path, _CARD_PX)}"
                f"<div style='{_WRAP}'>is <b>{html.escape(english_name(p['target']))}</b></div>"
                f"<div style='color:#c62828;{_WRAP}'>answered {html.escape(english_name(p['predicted']))} "
                f"({p['confidence']:.0%}{', unknown' if p['unknown'] else ''})</div>"
                f"<div style='color:#777;{_WRAP}'>{html.escape(path.name)}</div></div>")

    def use(self) -> Any:
        """Load the saved checkpoint as a classifier and hand it to ``on_use`` (the app's Classify and Gallery tabs)."""
        from amulet_lab.model import AmuletClassifier

        run = self._need_run()
        if self.on_use is None:
            raise ValidationError("this Train tab is not part of a ClassifierApp: open the checkpoint with "
                                  f"ClassifierApp.from_checkpoint({str(run.path)!r})", field="on_use",
                                  code="E_TRAIN_NO_APP")
        limits = getattr(self.template, "limits", None)
        cache = getattr(self.template, "cache", None)  # shared: its keys hold the model's fingerprint
        classifier = AmuletClassifier.from_checkpoint(run.path, limits=limits, cache=cache if cache is not None else False,
                                                      decode_workers=getattr(self.template, "decode_workers", 2))
        self.on_use(classifier)
        self.state = {**self.state, "status": "in use", "used": True}
        self.status.value = (f"<span style='color:#2e7d32;{_WRAP}'>The Classify and Gallery tabs now use "
                             f"{html.escape(run.path.name)}: {html.escape(run.card.headline())}.</span>")
        return classifier

    def describe(self) -> str:
        """What the panel shows now, in plain text (for notebooks and logs)."""
        st = self.state
        lines = [f"status: {st.get('status')}" + (f" ({st['error']}: {st['message']})" if st.get("error") else "")]
        if st.get("counts"):
            counts = st["counts"]
            lines.append(f"folder: {sum(counts.values())} photos of {len(counts)} classes ({st['layout']}): "
                         + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if st.get("metrics"):
            m = st["metrics"]
            lines += [f"trained: {st['arch']}, {st['cv']}-fold cross-validation, then all photos",
                      f"out of fold: accuracy {m['accuracy']:.2f}, macro-F1 {m['macro_f1']:.2f}, ECE {m['ece']:.2f}",
                      f"figures: {', '.join(st['figures'])}; misclassified shown: {st['misclassified']}",
                      f"checkpoint: {st['checkpoint']} (with its model card)", f"model card: {st['headline']}",
                      f"used in Classify: {st['used']}"]
        return "\n".join(lines)
