"""Sub-commands ``bench run``, ``bench compare``, ``bench micro``, ``bench ui``, ``report`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from amulet_lab.config import Settings

__all__ = ["register"]


def _csv_ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def register(subparsers: Any) -> None:
    """Add ``bench`` (run, compare, micro, ui), ``report`` and ``demo``."""
    bench = subparsers.add_parser("bench", help="benchmark scenarios, regression check, micro-benchmarks")
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCH_COMMAND")
    bench.set_defaults(func=lambda args, settings: (bench.print_help(), 2)[1])

    run = sub.add_parser("run", help="run benchmark scenarios and append them to the history")
    run.add_argument("scenarios", nargs="*", default=["single_stream", "offline", "server", "cache", "memory"],
                     help="single_stream offline server cache memory (default: all)")
    run.add_argument("--batch-sizes", type=_csv_ints, default=[1, 8], help="offline batch sizes, e.g. 1,8 (default 1,8)")
    run.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    run.add_argument("--samples", type=int, default=32, help="distinct images per scenario (default 32)")
    run.add_argument("--min-duration", dest="min_duration_s", type=float, default=1.0,
                     help="single_stream/offline: run at least this many seconds (default 1)")
    run.add_argument("--duration", dest="duration_s", type=float, default=3.0, help="seconds per server run (default 3)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--checkpoint", default=None, help="checkpoint (default: AMULET_MODEL_PATH or data/models/amulet6.pt)")
    run.add_argument("--data-dir", default=None, help="image folder (default: data/samples)")
    run.add_argument("--history-dir", default=None, help="history folder (default: reports/history)")
    run.add_argument("--target-qps", type=float, default=None, help="server: fixed target QPS (default: search)")
    run.add_argument("--latency-bound-ms", type=float, default=200.0, help="server: p99 bound (default 200)")
    run.add_argument("--server-threads", type=int, default=2, help="server: worker threads (default 2)")
    run.add_argument("--search-steps", type=int, default=5, help="server: bisection steps (default 5)")
    run.add_argument("--repeat-ratio", type=float, default=0.5, help="cache: share of repeated images (default 0.5)")
    run.add_argument("--cache", action="store_true", help="leave the classifier's cache on in the other scenarios")
    run.add_argument("--url", default=None, help="server: drive a running service at URL instead of in-process")
    run.add_argument("--token", default=None, help="server with --url: bearer token sent with every query")
    run.add_argument("--image-sizes", type=_csv_ints, default=None,
                     help="re-encode the photos with their longer side at each size, e.g. 128,224 (variant img=N)")
    run.add_argument("--no-record", action="store_true", help="do not append to the history")
    run.add_argument("--json", action="store_true", help="print the records as JSON")
    run.set_defaults(func=_run)

    cmp_ = sub.add_parser("compare", help="compare the latest run with earlier runs on this machine")
    cmp_.add_argument("--history-dir", default=None, help="history folder or .jsonl file (default: reports/history)")
    cmp_.add_argument("--run-id", default=None, help="the run to judge (default: the latest)")
    cmp_.add_argument("--json", action="store_true", help="print JSON")
    cmp_.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a regression is found")
    cmp_.set_defaults(func=_compare)

    micro = sub.add_parser("micro", help="micro-benchmarks against baselines measured in the same run")
    micro.add_argument("names", nargs="*", help="which (default: all)")
    micro.add_argument("--quick", action="store_true", help="fewer rounds (shape check, not figures)")
    micro.add_argument("--json", action="store_true", help="print JSON")
    micro.add_argument("--checkpoint", default=None, help="the model of those that classify (batch: default the "
                                                          "synthetic data/models/amulet6-synth.pt)")
    micro.add_argument("--photos", type=int, default=None, help="photos (batch: default 500, 60 with --quick)")
    micro.set_defaults(func=_micro)

    ui = sub.add_parser("ui", help="run notebook 01 in JupyterLab in headless Chromium: screenshots and timings "
                                   "(needs a local Chromium and the playwright package: make ui-check)")
    ui.add_argument("--chromium", default=None, help="Chromium executable (default: AMULET_CHROMIUM or /usr/bin/chromium)")
    ui.add_argument("--out", default=None, help="folder for the screenshots and ui.json (default: reports/ui)")
    ui.add_argument("--notebooks", default=None, help="notebooks folder, copied before use (default: notebooks/)")
    ui.add_argument("--notebook", default="01_classify.ipynb", help="the notebook to run (default 01_classify.ipynb)")
    ui.add_argument("--photo", action="append", default=None,
                    help="a photo to upload in the Classify tab (repeat; default: a 224 px JPEG and a 12-MP HEIC made here)")
    ui.add_argument("--phone-photo", action="append", default=None,
                    help="a photo to upload in a Phone photo tab (repeat; default: a 12-MP HEIC of three pieces)")
    ui.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for any one step (default 240)")
    ui.add_argument("--json", action="store_true", help="print ui.json instead of the summary")
    ui.add_argument("--find-chromium", action="store_true", help="only print the Chromium that would be used")
    ui.set_defaults(func=_ui)

    report = subparsers.add_parser("report", help="run notebooks 03 (benchmark) and 04 (report) into reports/, with HTML")
    report.add_argument("--out", default=None, help="output folder (default: reports/)")
    report.add_argument("--history-dir", default=None, help="history folder (default: OUT/history)")
    report.add_argument("--quick", action="store_true", help="small parameters (a minute or so)")
    report.add_argument("--no-html", action="store_true", help="skip the HTML export")
    report.set_defaults(func=_report)

    demo = subparsers.add_parser("demo", help="benchmark the default model on the sample photos and write the report")
    demo.add_argument("--out", default=None, help="output folder (default: reports/)")
    demo.add_argument("--quick", action="store_true", help="small parameters")
    demo.set_defaults(func=_demo)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from amulet_lab.bench.runner import run_benchmarks

    run = run_benchmarks(
        args.scenarios, checkpoint=args.checkpoint, data_dir=args.data_dir, history_dir=args.history_dir,
        batch_sizes=args.batch_sizes, threads=args.threads, samples=args.samples, duration_s=args.duration_s,
        min_duration_s=args.min_duration_s,
        seed=args.seed, target_qps=args.target_qps, latency_bound_ms=args.latency_bound_ms,
        server_threads=args.server_threads, search_steps=args.search_steps, repeat_ratio=args.repeat_ratio,
        cache=args.cache, url=args.url, token=args.token, image_sizes=args.image_sizes, record=not args.no_record,
        settings=settings,
    )
    if args.json:
        print(json.dumps(run.records, indent=2, sort_keys=True))
        return 0
    print(f"run {run.run_id}: {len(run.results)} result(s) in {run.seconds:.1f} s "
          f"(reference workload {run.reference['ms']:.3f} ms)")
    print(run.summary_frame().to_string())
    if run.history is not None:
        print(f"appended {len(run.records)} record(s) to {run.history.path}")
        print(run.comparison().to_text())
    return 0


def _compare(args: argparse.Namespace, settings: Settings) -> int:
    from amulet_lab.bench.compare import compare
    from amulet_lab.bench.history import History

    history = History(args.history_dir) if args.history_dir else History.from_settings(settings)
    result = compare(history, args.run_id)
    print(result.to_json() if args.json else result.to_text())
    return 1 if args.fail_on_regression and result.regressions else 0


def _micro(args: argparse.Namespace, settings: Settings) -> int:
    from amulet_lab.bench.micro import run_micro

    results = run_micro(args.names or None, quick=args.quick,
                        options={"checkpoint": args.checkpoint, "n": args.photos})
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print("\n".join(r.to_text() for r in results))
    return 0


def _ui(args: argparse.Namespace, settings: Settings) -> int:
    from amulet_lab.bench.chromium import find_chromium
    from amulet_lab.bench.ui import require_playwright, run_ui_check
    from amulet_lab.errors import AmuletError

    try:  # what the machine lacks is said plainly, with exit code 2 (not a failure of the app)
        chromium = find_chromium(args.chromium or settings.chromium or None)
        if args.find_chromium:
            print(chromium)
            return 0
        require_playwright()
    except AmuletError as exc:
        if exc.code not in ("E_NO_CHROMIUM", "E_NO_PLAYWRIGHT"):
            raise
        print(f"bench ui: {exc.message} [{exc.code}]", file=sys.stderr)
        return 2
    report = run_ui_check(chromium, notebooks=args.notebooks, notebook=args.notebook,
                          out_dir=args.out or settings.reports_path / "ui", photos=args.photo,
                          phone_photos=args.phone_photo, timeout_s=args.timeout)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    return 0


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from amulet_lab.bench.report import run_report

    result = run_report(args.out, quick=args.quick, history_dir=args.history_dir, html=not args.no_html,
                        settings=settings, progress=sys.stderr.isatty())
    print(result.summary())
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from amulet_lab.bench.report import run_report

    print("demo: benchmarking the default model on the sample photos (notebook 03), then writing the "
          "performance report (notebook 04) ...", flush=True)
    result = run_report(args.out, quick=args.quick, settings=settings, progress=sys.stderr.isatty())
    print(result.summary())
    page = next((p for p in result.html if p.name.startswith("04")), None)
    if page is not None:
        print(f"\nopen the report: file://{page.resolve()}")
    return 0
