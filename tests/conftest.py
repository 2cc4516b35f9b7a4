"""Shared fixtures: where shared/ lives, small helpers to run the console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

CONSOLE_SCRIPT = str(Path(sys.executable).with_name("lsuv-convert")) if Path(sys.executable).with_name(
    "lsuv-convert").exists() else (shutil.which("lsuv-convert") or "lsuv-convert")

# up-to-date records of test runs go to a throw-away folder, not the developer's ~/.cache
os.environ.setdefault("LSUV_CONVERT_STATE", tempfile.mkdtemp(prefix="lsuv-convert-test-state-"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED


def run_cli(*args, cwd=None, env=None, timeout=900, process=False) -> subprocess.CompletedProcess:
    """Run the CLI and capture its output: in this process (:func:`invoke`) unless ``process``,
    which runs the real console script (as installed) where a process boundary matters."""
    if not process:
        return invoke(*args, cwd=cwd, env=env)
    cmd = [CONSOLE_SCRIPT, *[str(a) for a in args]]
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def invoke(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run the CLI in this process (click's runner): same exit code, stdout and stderr as the
    console script, without a new interpreter and imports per call. Use :func:`run_cli` where a
    test needs a real process boundary (signals, the installed entry point, start-up cost)."""
    from click.testing import CliRunner

    from lsuv_convert.command.cli import main

    old_cwd = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        result = CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=True)
    finally:
        os.chdir(old_cwd)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess([CONSOLE_SCRIPT, *map(str, args)], result.exit_code,
                                       result.stdout, result.stderr)


@pytest.fixture
def cli():
    return run_cli
