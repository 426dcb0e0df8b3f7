"""Settings: defaults, environment and .env, validation, secret key, no dead variables."""

from __future__ import annotations

import re

import pytest

from amulet_lab.config import (
    PROJECT_ROOT,
    VARIABLES,
    Settings,
    get_settings,
    load_settings,
    render_env_example,
)
from amulet_lab.errors import SecurityError, ValidationError


def test_defaults_match_the_design():
    s = load_settings({}, dotenv=None)
    assert (s.cache_max_size, s.cache_default_ttl) == (104857600, 3600)
    assert (s.memory_warning_threshold, s.memory_critical_threshold) == (0.8, 0.9)
    # Below the 20 MB upload limit, so a large upload read from disk is mapped, never held twice.
    assert s.mmap_threshold == 4_194_304 < s.max_upload_bytes
    assert (s.connection_pool_size, s.chunk_size, s.thread_pool_size) == (100, 8192, 4)
    assert s.debug is False and s.secret_key is None and s.log_format == "text"


def test_table_and_dataclass_agree():
    import dataclasses

    assert [v.field for v in VARIABLES] == [f.name for f in dataclasses.fields(Settings)]
    defaults = Settings()
    for var in VARIABLES:
        assert getattr(defaults, var.field) == var.default, var.env


def test_environment_wins_over_dotenv(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("# comment\nAMULET_CACHE_DEFAULT_TTL=10\nexport AMULET_THREAD_POOL_SIZE=2\nAMULET_LOG_FORMAT='json'\n")
    s = load_settings({"AMULET_CACHE_DEFAULT_TTL": "20", "OTHER": "x"}, dotenv=dotenv)
    assert s.cache_default_ttl == 20 and s.thread_pool_size == 2 and s.log_format == "json"


@pytest.mark.parametrize(
    "name,value",
    [
        ("AMULET_CACHE_MAX_SIZE", "lots"),
        ("AMULET_CACHE_MAX_SIZE", "-1"),
        ("AMULET_CACHE_DEFAULT_TTL", "nan"),
        ("AMULET_MEMORY_WARNING_THRESHOLD", "1.5"),
        ("AMULET_DEBUG", "maybe"),
        ("AMULET_LOG_FORMAT", "xml"),
        ("AMULET_THREAD_POOL_SIZE", "0"),
    ],
)
def test_bad_values_name_the_variable_and_value(name, value):
    with pytest.raises(ValidationError) as info:
        load_settings({name: value}, dotenv=None)
    assert info.value.field == name
    assert name in str(info.value) and value in str(info.value)


def test_warning_must_be_below_critical():
    with pytest.raises(ValidationError) as info:
        load_settings({"AMULET_MEMORY_WARNING_THRESHOLD": "0.9", "AMULET_MEMORY_CRITICAL_THRESHOLD": "0.9"}, dotenv=None)
    assert "AMULET_MEMORY_WARNING_THRESHOLD" in str(info.value)


@pytest.mark.parametrize("key", [None, "", "changeme", "short"])
def test_missing_or_placeholder_secret_is_an_error_unless_debug(key):
    env = {} if key is None else {"AMULET_SECRET_KEY": key}
    with pytest.raises(SecurityError) as info:
        load_settings(env, dotenv=None).require_secret_key()
    assert info.value.code == "E_SECRET_KEY"
    debug = load_settings({**env, "AMULET_DEBUG": "true"}, dotenv=None)
    assert len(debug.require_secret_key()) >= 32
    good = "k" * 40
    assert load_settings({"AMULET_SECRET_KEY": good}, dotenv=None).require_secret_key() == good


def test_secret_key_is_not_in_repr():
    assert "hunter2" not in repr(load_settings({"AMULET_SECRET_KEY": "hunter2-hunter2-hunter2"}, dotenv=None))


def test_get_settings_is_cached(monkeypatch):
    monkeypatch.setenv("AMULET_THREAD_POOL_SIZE", "3")
    first = get_settings()
    monkeypatch.setenv("AMULET_THREAD_POOL_SIZE", "5")
    assert get_settings() is first and first.thread_pool_size == 3


def test_env_example_is_in_step():
    assert (PROJECT_ROOT / ".env.example").read_text() == render_env_example(), (
        "regenerate with: python -m amulet_lab.config > .env.example"
    )


def test_readme_documents_every_variable():
    readme = (PROJECT_ROOT / "README.md").read_text()
    missing = [v.env for v in VARIABLES if f"`{v.env}`" not in readme]
    assert not missing, f"README's settings table lacks {missing}"


def test_no_variable_is_dead():
    """Every setting is read by code outside config.py (settings.<field> or s.<field>)."""
    sources = [
        p.read_text()
        for p in (PROJECT_ROOT / "amulet_lab").rglob("*.py")
        if p.name != "config.py"
    ]
    text = "\n".join(sources)
    # Two are read through Settings helpers: require_secret_key() and reports_path.
    through = {"secret_key": "require_secret_key()", "reports_dir": ".reports_path"}

    def is_read(var):
        if var.field in through:
            return through[var.field] in text
        return re.search(rf"\.{var.field}\b", text) is not None

    dead = [v.env for v in VARIABLES if not is_read(v)]
    assert not dead, f"variables nobody reads: {dead}"


@pytest.mark.parametrize("name", ["AMULET_CACHE_DEFAULT_TTL", "AMULET_THREAD_POOL_SIZE", "AMULET_MAX_UPLOAD_BYTES",
                                  "AMULET_HTTP_TIMEOUT", "AMULET_MEMORY_BUDGET_MB"])
def test_zero_is_refused_where_it_makes_no_sense(name):
    with pytest.raises(ValidationError) as info:
        load_settings({name: "0"}, dotenv=None)
    assert info.value.field == name


def test_replace_validates_again():
    with pytest.raises(ValidationError) as info:
        Settings().replace(cache_max_size=-5)
    assert info.value.field == "AMULET_CACHE_MAX_SIZE"
    assert Settings().replace(thread_pool_size=2).thread_pool_size == 2


def test_readme_table_rows_match_defaults_and_meanings():
    """Each README row `| `AMULET_X` | default | meaning |` says what VARIABLES says."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    rows = {
        m.group(1): (m.group(2).strip(), m.group(3).strip())
        for m in re.finditer(r"^\| `(AMULET_\w+)` \| ([^|]*) \| (.*) \|$", readme, re.M)
    }
    assert set(rows) == {v.env for v in VARIABLES}, "README's settings table and config.VARIABLES name different variables"
    for var in VARIABLES:
        default = var.default
        shown = "(empty)" if default is None else ("true" if default is True else "false" if default is False else str(default))
        assert rows[var.env] == (shown, var.doc), f"README row of {var.env} differs from config.VARIABLES"


def test_load_settings_checks_its_arguments(tmp_path):
    with pytest.raises(ValidationError) as info:
        load_settings([("AMULET_DEBUG", "true")], dotenv=None)
    assert info.value.field == "environ"
    with pytest.raises(ValidationError) as info:
        load_settings({"AMULET_THREAD_POOL_SIZE": 2}, dotenv=None)  # a notebook passing a number
    assert info.value.field == "AMULET_THREAD_POOL_SIZE" and "2" in str(info.value)
    with pytest.raises(ValidationError):
        load_settings({}, dotenv=3)
    bad = tmp_path / ".env"
    bad.write_bytes(b"AMULET_JWT_ISSUER=\xff\xfe\n")
    with pytest.raises(ValidationError) as info:
        load_settings({}, dotenv=bad)
    assert info.value.code == "E_CONFIG" and str(bad) in str(info.value)
    assert load_settings({"AMULET_THREAD_POOL_SIZE": "2", 5: "ignored"}, dotenv=None).thread_pool_size == 2


def test_the_edges_apply_settings_to_the_process_wide_instances(settings):
    """AMULET_MEMORY_*, AMULET_THREAD_POOL_SIZE and AMULET_CHUNK_SIZE act through ``runtime.apply_settings``."""
    from amulet_lab import memory
    from amulet_lab.runtime import apply_settings
    from amulet_lab.threads import get_thread_pool_manager

    custom = settings.replace(memory_warning_threshold=0.5, memory_critical_threshold=0.6, memory_budget_mb=900.0,
                              cache_shrink_fraction=0.25, thread_pool_size=3, chunk_size=4096, max_image_side=5000)
    try:
        apply_settings(custom)
        monitor = memory.get_memory_monitor()
        assert (monitor.warning_threshold, monitor.critical_threshold, monitor.budget_mb,
                monitor.cache_shrink_fraction) == (0.5, 0.6, 900.0, 0.25)
        assert get_thread_pool_manager().default_workers == 3
        assert memory.streaming_handler.chunk_size == 4096 and memory.streaming_handler.limits.max_image_side == 5000
        with pytest.raises(ValidationError):
            apply_settings({"AMULET_THREAD_POOL_SIZE": "3"})  # type: ignore[arg-type]
    finally:
        apply_settings(settings)


@pytest.mark.parametrize("name,value", [
    ("AMULET_MAX_UPLOAD_BYTES", "100000000000000000000"), ("AMULET_THREAD_POOL_SIZE", "100000"),
    ("AMULET_MAX_IMAGE_PIXELS", "10000000000"), ("AMULET_CACHE_MAX_SIZE", "1" + "0" * 15),
    ("AMULET_CONNECTION_POOL_SIZE", "1000000"), ("AMULET_RATE_LIMIT_BURST", "10000000"),
    ("AMULET_BATCH_MAX_SIZE", "100000"), ("AMULET_MAX_CONNECTIONS", "10000000"), ("AMULET_TOKEN_MAX_TTL_S", "1e20"),
    ("AMULET_UPLOAD_TIMEOUT_S", "0"), ("AMULET_BATCH_MAX_SIZE", "0"),
])
def test_every_size_and_count_has_bounds(name, value):
    with pytest.raises(ValidationError) as info:
        load_settings({name: value}, dotenv=None)
    assert info.value.field == name


def test_every_number_has_an_upper_bound():
    unbounded = [v.env for v in VARIABLES if v.kind in ("int", "float", "optional_float") and v.maximum is None]
    assert not unbounded, f"no upper bound: {unbounded}"


@pytest.mark.parametrize("name", ["AMULET_JWT_AUDIENCE", "AMULET_JWT_ISSUER"])
def test_an_empty_audience_or_issuer_is_refused(name):
    with pytest.raises(ValidationError) as info:
        load_settings({name: " "}, dotenv=None)
    assert info.value.field == name
