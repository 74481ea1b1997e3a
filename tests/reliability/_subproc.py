"""Run a scenario in a fresh Python process with a hard timeout, so a hang or a crash becomes a
test failure with the child's output, never a stuck test run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Outcome:
    """What a child process did: ``returncode``, ``stdout``, ``stderr``, ``seconds``."""

    def __init__(self, returncode: int, stdout: str, stderr: str, seconds: float):
        self.returncode, self.stdout, self.stderr, self.seconds = returncode, stdout, stderr, seconds

    def __repr__(self) -> str:
        return (f"<Outcome rc={self.returncode} in {self.seconds:.2f} s>\n--- stdout ---\n{self.stdout[-4000:]}"
                f"\n--- stderr ---\n{self.stderr[-4000:]}")


def run_python(code: str, *, timeout: float = 60.0, env: dict | None = None, args: tuple = (),
               prefix: tuple = ()) -> Outcome:
    """Run ``code`` (dedented) with this interpreter in a new process and return its
    :class:`Outcome`. A child still running after ``timeout`` seconds is killed and the test
    fails with what it printed. ``prefix`` goes before the interpreter (e.g. a tool that wraps
    it, such as compute-sanitizer). The child finds cudaevents as this process does (the
    repository's ``src`` is put first on its path when present)."""
    import time

    child_env = dict(os.environ)
    src = os.path.join(ROOT, "src")
    if os.path.isdir(src):
        child_env["PYTHONPATH"] = src + os.pathsep + child_env.get("PYTHONPATH", "")
    child_env.update(env or {})
    cmd = [*prefix, sys.executable, "-c", textwrap.dedent(code), *args]
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise AssertionError(f"the scenario hung: killed after {timeout:g} s\n--- stdout ---\n{out[-4000:]}"
                             f"\n--- stderr ---\n{err[-4000:]}") from None
    return Outcome(done.returncode, done.stdout, done.stderr, time.monotonic() - start)
