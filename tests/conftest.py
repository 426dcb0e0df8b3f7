"""Shared fixtures. Area-specific fixtures live in the test modules that use them."""

from __future__ import annotations

from pathlib import Path

import pytest

from amulet_lab.config import PROJECT_ROOT, Settings, _reset_settings_cache, load_settings
from amulet_lab.errors import set_testing

SHARED_DATASET = PROJECT_ROOT.parent / "shared" / "datasets" / "amulet6"


@pytest.fixture(autouse=True, scope="session")
def _no_retry_waits():
    """Retry waits are zero in tests (the one testing switch); attempts still count."""
    set_testing(True)
    yield
    set_testing(False)


@pytest.fixture
def settings() -> Settings:
    """Default settings, independent of the developer's environment and .env."""
    return load_settings({}, dotenv=None)


@pytest.fixture
def limits():
    """The decoder's default limits (the documented defaults)."""
    from amulet_lab.security import ImageLimits

    return ImageLimits()


@pytest.fixture(autouse=True)
def _fresh_settings_cache():
    """Each test starts with no cached process settings."""
    _reset_settings_cache()
    yield
    _reset_settings_cache()


@pytest.fixture(autouse=True)
def _restore_amulet_logger():
    """CLI tests configure the amulet_lab logger; put it back so later tests see the library default."""
    import logging

    logger = logging.getLogger("amulet_lab")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture
def shared_dataset() -> Path:
    """The real amulet6 photos beside the checkout; the test skips where they are absent."""
    if not SHARED_DATASET.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATASET}")
    return SHARED_DATASET


def pytest_collection_modifyitems(config, items):
    """Tests marked ``realdata`` skip where ../shared/datasets/amulet6 is absent."""
    if SHARED_DATASET.is_dir():
        return
    skip = pytest.mark.skip(reason=f"real data not present at {SHARED_DATASET}")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)
