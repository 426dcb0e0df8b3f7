"""Micro-benchmarks: our building blocks against a baseline measured in the same run.

Each module here defines ``run(quick: bool = False) -> MicroResult``. Figures are ratios
against a baseline timed in the same process moments apart (machines here are shared and
noisy: absolute times mean little). ``amulet-lab bench micro [NAME ...]`` runs them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["MicroResult", "Target", "MICRO_BENCHMARKS", "run_micro", "time_per_call", "one_torch_thread"]

#: name -> module; each module's ``run(quick)`` returns a MicroResult.
MICRO_BENCHMARKS: dict[str, str] = {
    "errors": "amulet_lab.bench.micro.errors",
    "cache": "amulet_lab.bench.micro.cache",
    "http": "amulet_lab.bench.micro.http",
    "threads": "amulet_lab.bench.micro.threads",
    "memory": "amulet_lab.bench.micro.memory",
    "pipeline": "amulet_lab.bench.micro.pipeline",
    "validation": "amulet_lab.bench.micro.validation",
    "shared": "amulet_lab.bench.micro.shared",
    "batch": "amulet_lab.bench.micro.batch",
    "scene": "amulet_lab.bench.micro.scene",
    "finder": "amulet_lab.bench.micro.finder",
}


@dataclasses.dataclass(frozen=True)
class Target:
    """A goal for one ratio: ``ratio <op> value`` with op ``<=`` or ``>=``."""

    op: str
    value: float

    def met(self, ratio: float) -> bool:
        """Whether ``ratio`` meets the goal."""
        return ratio <= self.value if self.op == "<=" else ratio >= self.value


@dataclasses.dataclass
class MicroResult:
    """Figures (seconds, bytes, ...) and ratios of one micro-benchmark, with their targets."""

    name: str
    figures: dict[str, float]
    ratios: dict[str, float]
    targets: dict[str, Target] = dataclasses.field(default_factory=dict)
    notes: str = ""

    def verdicts(self) -> dict[str, bool]:
        """For each ratio with a target: whether it was met."""
        return {k: t.met(self.ratios[k]) for k, t in self.targets.items() if k in self.ratios}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "figures": self.figures,
            "ratios": self.ratios,
            "targets": {k: f"{t.op} {t.value}" for k, t in self.targets.items()},
            "met": self.verdicts(),
            "notes": self.notes,
        }

    def to_text(self) -> str:
        """A short plain-text table."""
        lines = [f"== {self.name}"]
        for key, value in self.figures.items():
            lines.append(f"  {key:<44} {value:.6g}")
        verdicts = self.verdicts()
        for key, value in self.ratios.items():
            target = self.targets.get(key)
            mark = "" if target is None else f"  (target {target.op} {target.value}: {'met' if verdicts[key] else 'NOT met'})"
            lines.append(f"  ratio {key:<38} {value:.3f}{mark}")
        if self.notes:
            lines.append(f"  note: {self.notes}")
        return "\n".join(lines)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for the block, then as it was: on a shared 2-core machine two OpenMP threads waiting on
    each other make a small forward pass 10-100x slower at random, which would drown the ratios in noise."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def time_per_call(fn: Callable[[], Any], *, number: int, repeat: int = 5) -> float:
    """Median seconds per call of ``fn`` over ``repeat`` rounds of ``number`` calls."""
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - start) / number)
    return statistics.median(rounds)


def run_micro(names: list[str] | None = None, *, quick: bool = False,
              options: dict[str, Any] | None = None) -> list[MicroResult]:
    """Run the named micro-benchmarks (all by default) and return their results. ``options`` (for example
    ``{"checkpoint": path}``) go to each chosen benchmark whose ``run`` takes them; one that none takes is refused."""
    import inspect

    from amulet_lab.errors import ValidationError

    chosen = names or list(MICRO_BENCHMARKS)
    unknown = [n for n in chosen if n not in MICRO_BENCHMARKS]
    if unknown:
        raise ValidationError(
            f"unknown micro-benchmark(s) {unknown}; choose from {sorted(MICRO_BENCHMARKS)}", field="names", value=unknown
        )
    options = {k: v for k, v in (options or {}).items() if v is not None}
    runs = {n: importlib.import_module(MICRO_BENCHMARKS[n]).run for n in chosen}
    takes = {n: set(inspect.signature(fn).parameters) & set(options) for n, fn in runs.items()}
    unused = sorted(set(options) - set().union(*takes.values()))
    if unused:
        raise ValidationError(f"no chosen micro-benchmark takes {unused} (chosen: {chosen})", field="options",
                              value=unused)
    return [fn(quick=quick, **{k: options[k] for k in takes[n]}) for n, fn in runs.items()]
