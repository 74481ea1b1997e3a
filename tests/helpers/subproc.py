"""The one way tests run Python in a child process: with a hard timeout, so that a hang or a
crash becomes a test failure showing the child's output, never a stuck test run.

Scripts live in tests/scripts (:data:`SCRIPTS`) and take what varies as arguments and
environment variables. The child finds cudaevents where this process found it (the folder
holding the imported package first on its path: the repository's ``src`` when run from the
tree, the install otherwise, which holds the compiled extension) and these helpers (``tests/``
on its path).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cudaevents

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
PACKAGE_HOME = Path(cudaevents.__file__).resolve().parent.parent  # where this process imports it from
SCRIPTS = TESTS / "scripts"
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}  # the driver then reports no device, on a GPU machine too


class Outcome:
    """What a child process did: ``returncode``, ``stdout``, ``stderr``, ``seconds``."""

    def __init__(self, returncode: int, stdout: str, stderr: str, seconds: float):
        self.returncode, self.stdout, self.stderr, self.seconds = returncode, stdout, stderr, seconds

    def __repr__(self) -> str:
        return (f"<Outcome rc={self.returncode} in {self.seconds:.2f} s>\n--- stdout ---\n{self.stdout[-4000:]}"
                f"\n--- stderr ---\n{self.stderr[-4000:]}")


def run(args, *, timeout: float = 60.0, env: dict | None = None, prefix=(), cwd=ROOT) -> Outcome:
    """Run this interpreter with ``args`` (a script's path and its arguments, ``-m ...`` or
    ``-c ...``) in a new process and return its :class:`Outcome`. A child still running after
    ``timeout`` seconds is killed and the test fails with what it printed. ``env`` is added to
    this process's environment; ``prefix`` goes before the interpreter (a tool that wraps it,
    such as compute-sanitizer)."""
    child_env = dict(os.environ)
    paths = [str(PACKAGE_HOME), str(TESTS)]
    if child_env.get("PYTHONPATH"):
        paths.append(child_env["PYTHONPATH"])
    child_env["PYTHONPATH"] = os.pathsep.join(paths)
    child_env.update(env or {})
    cmd = [*map(str, prefix), sys.executable, *map(str, args)]
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=child_env, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise AssertionError(f"{cmd[len(prefix) + 1:]} hung: killed after {timeout:g} s\n--- stdout ---\n"
                             f"{out[-4000:]}\n--- stderr ---\n{err[-4000:]}") from None
    return Outcome(done.returncode, done.stdout, done.stderr, time.monotonic() - start)


def run_script(name: str, *args, **options) -> Outcome:
    """:func:`run` the script tests/scripts/``name`` with ``args``."""
    return run([SCRIPTS / name, *args], **options)


def run_code(code: str, *args, **options) -> Outcome:
    """:func:`run` a line or two of Python (``-c``); anything longer belongs in tests/scripts."""
    return run(["-c", textwrap.dedent(code), *args], **options)


def run_cli(*args, **options) -> Outcome:
    """:func:`run` ``python -m cudaevents ARGS``."""
    return run(["-m", "cudaevents", *args], **options)


def compute_sanitizer() -> str | None:
    """Where NVIDIA's compute-sanitizer is (on PATH or in /usr/local/cuda/bin), or ``None``."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    default = "/usr/local/cuda/bin/compute-sanitizer"
    return default if os.access(default, os.X_OK) else None


def memcheck_prefix() -> tuple:
    """The prefix that runs a child under compute-sanitizer's memcheck (exit code 99 on an
    error); skips the test where the tool is missing."""
    import pytest

    tool = compute_sanitizer()
    if tool is None:
        pytest.skip("compute-sanitizer not found (on PATH or at /usr/local/cuda/bin); install the CUDA toolkit")
    return (tool, "--tool", "memcheck", "--error-exitcode", "99")
