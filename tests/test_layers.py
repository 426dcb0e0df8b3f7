"""Layers that hold themselves: imports point down only, no import cycles, pinned public names, light imports.

The module graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` in a module counts, at module level or inside a function (a lazy import is an import).
Imports under ``if TYPE_CHECKING:`` are exempt: they never run, they only name types for the checker.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "amulet_lab"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: The layer sketch (README, "Layout"): a module may import modules of its own layer or of lower ones.
#: Keys are the first name under ``amulet_lab`` (a top-level module or a subpackage).
LAYERS: dict[str, int] = {
    # 0: foundations
    "config": 0, "errors": 0, "files": 0, "logs": 0, "display": 0,
    "fonts": 0,  # Thai text in HTML and figures: beside display (imports nothing of ours)
    # 1: generic building blocks (they know no model), the one decoder of untrusted input among them: memory's
    # streaming of large images decodes through security.validate_image, so security sits here, not above.
    "cache": 1, "perf": 1, "memory": 1, "threads": 1, "security": 1, "pixels": 1,
    "masks": 1,  # numpy masks and connected components (no scipy here), for the scene finder and composites
    # 2: images to model input, and finding the pieces in a photo (it knows no model)
    "images": 2, "scene": 2,
    # 3: data and the model
    "data": 3, "model": 3,
    # 4: benchmarks and the health report
    "bench": 4, "health": 4, "runtime": 4,
    "batch": 4,  # classifying folders on Dask (the model below it; the CLI and the batch benchmark above or beside)
    # 5: the edges
    "widgets": 5, "service": 5, "cli": 5, "magics": 5, "__main__": 5,
}
#: ``amulet_lab/__init__.py`` itself (``__version__``; every module imports it implicitly) is at the bottom.
ROOT_LAYER = 0
#: Upward imports allowed on purpose, (importing module, imported module) -> why.
EXEMPT: dict[tuple[str, str], str] = {
    # ``%load_ext amulet_lab`` makes IPython call ``amulet_lab.load_ipython_extension``: the package is only
    # the address IPython knows, the import runs inside that hook (never at ``import amulet_lab``).
    ("amulet_lab", "amulet_lab.magics"): "IPython extension hook",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(name: str) -> str | None:
    """The module of ours that ``name`` names (the longest known prefix), or None for a foreign module."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported module of ours) for every import in the file, TYPE_CHECKING blocks left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name)
                if target:
                    found.append((node.lineno, target))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source == PACKAGE or source.startswith(PACKAGE + "."):
                for alias in node.names:
                    # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one.
                    sub = f"{source}.{alias.name}"
                    target = sub if sub in MODULES else _resolve(source)
                    if target:
                        found.append((node.lineno, target))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


GRAPH: dict[str, list[tuple[int, str]]] = {m: _imports(m, p) for m, p in MODULES.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return ROOT_LAYER
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module} is in no layer: add {parts[1]!r} to LAYERS (and to the README's Layout)")
    return LAYERS[parts[1]]


def test_every_module_has_a_layer():
    for module in MODULES:
        _layer(module)


def test_imports_point_down_only():
    upward = []
    for module, imports in GRAPH.items():
        for line, target in sorted(set(imports)):
            if _layer(target) > _layer(module) and (module, target) not in EXEMPT:
                rel = MODULES[module].relative_to(ROOT.parent)
                upward.append(f"{rel}:{line} imports {target} (layer {_layer(module)} -> {_layer(target)})")
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def _cycles() -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), or a self-import."""
    edges = {m: sorted({t for _, t in imps}) for m, imps in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                components.append(component)

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)

    cycles = []
    for component in components:
        members = set(component)
        start = min(component)
        # A shortest path from start back to start inside the component: the cycle to report.
        paths = {start: [start]}
        frontier = [start]
        cycle = None
        while frontier and cycle is None:
            nxt = []
            for v in frontier:
                for w in edges[v]:
                    if w == start:
                        cycle = paths[v] + [start]
                        break
                    if w in members and w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
                if cycle:
                    break
            frontier = nxt
        cycles.append(cycle or sorted(component))
    return cycles


def test_no_import_cycles():
    def where(a: str, b: str) -> str:
        lines = [line for line, t in GRAPH[a] if t == b]
        return f"{MODULES[a].relative_to(ROOT.parent)}:{lines[0]}"

    cycles = _cycles()
    report = [" -> ".join(c) + "  (" + ", ".join(where(a, b) for a, b in zip(c, c[1:])) + ")" for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(report)


# ------------------------------------------------------------------------------------------ public names
# Every package and top-level module, with its ``__all__`` sorted. A change of API must update this on purpose.
PUBLIC_ALL: dict[str, list[str]] = {
    "amulet_lab": ["__version__", "load_ipython_extension"],
    "amulet_lab.batch": [
        "BatchReport", "BatchResult", "COLUMNS", "SCENE_COLUMNS", "class_counts", "classify", "classify_files",
        "cluster_config", "collect_images", "dask_client", "error_rows", "file_sha256", "load_worker_model", "most_uncertain",
        "prepare_worker", "read_rows", "results_frame", "task_size_for", "unknown_rows", "worker_environ",
        "worker_model_loads"
    ],
    "amulet_lab.bench": [
        "BenchRun", "Comparison", "History", "SCENARIOS", "Threshold", "machine_info", "reference_workload",
        "run_benchmarks", "run_report"
    ],
    "amulet_lab.bench.micro": [
        "MICRO_BENCHMARKS", "MicroResult", "Target", "one_torch_thread", "run_micro", "time_per_call"
    ],
    "amulet_lab.bench.scenarios": [
        "Pipeline", "STAGES", "ScenarioResult", "aserver", "aserver_search", "cache_scenario", "distinct_images",
        "image_paths", "load_images", "memory_scenario", "offline", "percentile", "resize_images", "server",
        "server_search", "single_stream"
    ],
    "amulet_lab.cache": [
        "ImageCache", "SWEEP_LIMIT", "SharedStore", "TTLCache", "get_image_cache", "peek_image_cache", "redact_url",
        "sizeof"
    ],
    "amulet_lab.cli": ["build_parser", "main"],
    "amulet_lab.config": ["PROJECT_ROOT", "Settings", "VARIABLES", "Variable", "get_settings", "load_settings"],
    "amulet_lab.data": [
        "Composite", "CompositePiece", "DEFAULT_LABELS_PATH", "DatasetSplits", "Label", "NOT_AMULET", "REVIEW_HEADER",
        "ReviewLabels", "ReviewRow", "SAMPLES_DIR", "Sample", "SourcePiece", "content_fingerprint", "fingerprint",
        "folder_sources", "load_dataset", "load_labels", "make_composite", "photo_sha256", "read_manifest",
        "stratified_kfold", "synthesize", "synthesize_unknowns", "synthetic_sources", "write_composites"
    ],
    "amulet_lab.display": ["format_value", "html_table"],
    "amulet_lab.errors": [
        "AmuletError", "CircuitBreaker", "CircuitOpenError", "LockTimeoutError", "MemoryBudgetExceeded",
        "ModelError", "NetworkError", "ProcessingError", "RetryPolicy", "SecurityError", "ValidationError",
        "error_context", "is_testing", "retry_on_failure", "set_testing"
    ],
    "amulet_lab.files": [
        "atomic_append_line", "atomic_append_lines", "atomic_write_bytes", "atomic_write_text", "atomic_writer",
        "existing_file", "hash_stream"
    ],
    "amulet_lab.fonts": [
        "BUNDLED_THAI_FAMILY", "KNOWN_THAI_FONTS", "THAI_CSS_FONT_STACK", "bundled_thai_font", "figure_text",
        "font_family_with_thai", "has_thai", "thai_font_face", "thai_font_note", "thai_fonts", "thai_html"
    ],
    "amulet_lab.health": [
        "ERROR_RATE_DEGRADED", "HEALTH_SCHEMA", "PUBLIC_MODEL_KEYS", "api_metrics", "build_health_report",
        "overall_status", "public_model_status"
    ],
    "amulet_lab.images": [
        "ImageInput", "PreprocessSpec", "decode", "preprocess", "resize_square", "to_array", "to_uint8_batch"
    ],
    "amulet_lab.logs": ["JsonFormatter", "configure_logging"],
    "amulet_lab.magics": ["ProfileReport", "ProfiledCellError", "amulet_profile", "register"],
    "amulet_lab.masks": [
        "bounding_box", "box_sum", "convex_hull", "dilate", "erode", "fill_holes", "label_components",
        "largest_component", "plain_background_mask", "polygon_area", "polygon_pixels", "row_ends"
    ],
    "amulet_lab.memory": [
        "GCManager", "LEVELS", "MemoryMonitor", "MemoryUsage", "RssSampler", "StreamingHandler",
        "check_memory_pressure", "gc_manager", "gc_responder", "get_current_usage", "get_memory_monitor",
        "get_stats", "image_cache_responder", "memory_efficient_operation", "memory_limit_context",
        "memory_monitor", "register_responder", "rss_bytes", "shrink_caches_responder", "streaming_handler"
    ],
    "amulet_lab.model": [
        "ARCHITECTURES", "AmuletClassifier", "AmuletNet", "Answer", "Checkpoint", "Explanation", "PairPrediction", "Prediction",
        "PredictionCache", "SharedAnswers", "TrainConfig", "UnknownRule", "build_model", "confidence_band",
        "cross_validate", "default_checkpoint_path", "evaluate", "fit", "format_metrics", "load_checkpoint",
        "make_checkpoint", "metrics", "save_checkpoint", "train"
    ],
    "amulet_lab.perf": ["HttpPool", "PerformanceMonitor", "performance_monitor", "timed_operation"],
    "amulet_lab.pixels": ["DECODE_ERRORS", "check_dimensions", "to_rgb"],
    "amulet_lab.runtime": ["apply_settings"],
    "amulet_lab.scene": ["FoundPiece", "ReducedFind", "WORK_SIDE", "crop_piece", "find_on_reduced", "find_pieces"],
    "amulet_lab.security": [
        "ALLOWED_FORMATS", "ImageInput", "ImageLimits", "ValidatedImage", "content_hash", "generated_name",
        "register_heif", "safe_filename", "sniff_format", "validate_image"
    ],
    "amulet_lab.service": ["ServiceState", "create_app", "issue_token", "verify_token"],
    "amulet_lab.threads": [
        "AsyncSafeDict", "AtomicCounter", "KINDS", "LockManager", "ThreadPoolManager", "ThreadSafeDict",
        "ThreadSafeQueue", "WeightedSemaphore", "async_named_lock", "get_lock_manager", "get_stats",
        "get_thread_pool_manager", "named_lock", "thread_safe_operation"
    ],
    "amulet_lab.widgets": [
        "BAND_WORDS", "ClassifierApp", "Gallery", "GalleryItem", "ReviewPanel", "ScenePanel", "TrainPanel", "band_words",
        "english_name", "sample_pair", "upload_bytes"
    ],
}


def _declared_all(path: Path) -> list[str] | None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return sorted(ast.literal_eval(node.value))
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "__all__":
            return sorted(ast.literal_eval(node.value))  # type: ignore[arg-type]
    return None


def _pinned_modules() -> list[str]:
    """Packages (``__init__``) and the modules directly under ``amulet_lab`` (``__main__``, a script, aside)."""
    return sorted(m for m, p in MODULES.items()
                  if (p.name == "__init__.py" or m.count(".") == 1) and m != "amulet_lab.__main__")


def test_public_names_are_pinned():
    actual = {m: _declared_all(MODULES[m]) for m in _pinned_modules()}
    assert actual == PUBLIC_ALL, (
        "a public API changed: update PUBLIC_ALL in tests/test_layers.py on purpose\n"
        + json.dumps({m: v for m, v in actual.items() if PUBLIC_ALL.get(m) != v}, indent=1)
    )


# --------------------------------------------------------------------------------------- light imports
HEAVY = ("asyncio", "torch", "PIL", "numpy")


@pytest.mark.parametrize(
    "module",
    [
        "amulet_lab",
        "amulet_lab.errors",
        "amulet_lab.cache",
    ],
)
def test_light_modules_load_nothing_heavy(module):
    code = f"import json, sys, {module}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# ------------------------------------------------------------------------------- settings at the edge
GENERIC_WITH_PLAIN_VALUES = ("memory/_monitor.py", "threads/_pools.py", "perf/_http.py")


@pytest.mark.parametrize("rel", GENERIC_WITH_PLAIN_VALUES)
def test_generic_modules_read_no_settings(rel):
    """Their constructors take plain values; only edges build them from settings (``from_settings``)."""
    tree = ast.parse((ROOT / rel).read_text(encoding="utf-8"))
    calls = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call) and (
        getattr(node.func, "id", None) == "get_settings" or getattr(node.func, "attr", None) == "get_settings")]
    assert not calls, f"{rel} calls get_settings() at lines {calls}"


def test_plain_defaults_are_the_documented_defaults():
    from amulet_lab.config import VARIABLES
    from amulet_lab.memory import MemoryMonitor, shrink_caches_responder
    from amulet_lab.perf._http import HttpPool
    from amulet_lab.threads import ThreadPoolManager

    documented = {v.field: v.default for v in VARIABLES}
    monitor = MemoryMonitor(builtin_responders=False)
    plain = (monitor.warning_threshold, monitor.critical_threshold, monitor.budget_mb, monitor.cache_shrink_fraction)
    assert plain == (documented["memory_warning_threshold"], documented["memory_critical_threshold"],
                     documented["memory_budget_mb"], documented["cache_shrink_fraction"])
    assert ThreadPoolManager().default_workers == documented["thread_pool_size"]
    pool = HttpPool()
    assert (pool.max_connections, pool.timeout) == (documented["connection_pool_size"], documented["http_timeout"])
    assert "0.5" in shrink_caches_responder([]).__qualname__ and documented["cache_shrink_fraction"] == 0.5


def test_the_readme_states_the_layers_and_the_flow_the_code_has():
    """The README's layer table is this test's LAYERS; its flow names the classifier's stages in their order."""
    import re

    readme = (ROOT.parent / "README.md").read_text(encoding="utf-8")
    stated: dict[str, int] = {}
    for number, names in re.findall(r"^layer (\d)  (.+)$", readme, flags=re.M):
        stated.update(dict.fromkeys(names.split(), int(number)))
    assert stated == LAYERS, "README's layer table and tests/test_layers.py LAYERS differ"
    flow = readme[readme.index("**A photo's way**"):]
    flow = flow[:flow.index("\n```\n", flow.index("```") + 3)]
    steps = re.findall(r"^\s*(?:bytes or path )?-> (\w+)", flow, flags=re.M)
    from amulet_lab.model.classifier import STAGES, AmuletClassifier

    assert steps[0] == "content_key" and steps[1] == "PredictionCache"
    # every stage the classifier times, in order (lookup = content_key + the cache), then the monitor
    assert ["lookup", *steps[2:6]] == list(STAGES) and steps[-1] == "perf"
    for method in ("content_key", "decode", "preprocess", "infer", "postprocess"):
        assert callable(getattr(AmuletClassifier, method)), method
