"""Package hygiene: cheap import, nothing running at import, logging only under amulet_lab."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from amulet_lab.logs import configure_logging

GENERIC = ["amulet_lab", "amulet_lab.config", "amulet_lab.errors", "amulet_lab.files", "amulet_lab.logs",
           "amulet_lab.cache", "amulet_lab.perf", "amulet_lab.memory", "amulet_lab.threads", "amulet_lab.security",
           "amulet_lab.data", "amulet_lab.cli"]


def test_generic_modules_import_without_torch_threads_or_root_handlers():
    code = f"""
import importlib, json, logging, sys, threading
mods = {GENERIC!r}
for m in mods:
    importlib.import_module(m)
print(json.dumps({{"torch": "torch" in sys.modules, "threads": threading.active_count(),
                  "root_handlers": len(logging.getLogger().handlers)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts == {"torch": False, "threads": 1, "root_handlers": 0}


def test_json_logging_goes_to_the_amulet_lab_logger_only(capsys):
    import io

    stream = io.StringIO()
    logger = configure_logging("json", "INFO", stream=stream)
    try:
        logging.getLogger("amulet_lab.test").info("hello %s", "world", extra={"operation": "op1"})
        record = json.loads(stream.getvalue().strip())
        assert record["message"] == "hello world" and record["operation"] == "op1" and record["level"] == "INFO"
        assert logging.getLogger().handlers == [] or all(h not in logger.handlers for h in logging.getLogger().handlers)
        configure_logging("text", "INFO", stream=stream)  # calling again replaces, never stacks
        assert sum(1 for h in logger.handlers if getattr(h, "_amulet_lab_handler", False)) == 1
    finally:
        for h in list(logger.handlers):
            if getattr(h, "_amulet_lab_handler", False):
                logger.removeHandler(h)
        logger.propagate = True


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "amulet_lab", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "amulet-lab" in out.stdout
