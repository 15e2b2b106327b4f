"""Run one function in a fresh Python process: what it held on the GPU is freed when the process exits.

vLLM checks at start-up that the GPU has the memory it was asked for. A stage that ran an engine (TRL's
colocate vLLM, a rollouts engine, a trainer) in this process keeps much of that memory until the process
ends, so the next stage's engine would fail to start. The pipeline and the experiments therefore run each GPU
stage through `run_isolated`.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

# the child: unpickle (func, args) from stdin, run, pickle ("ok", result) or ("error", text) to the result path
CHILD = """
import logging, pickle, sys, traceback
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
out = sys.argv[1]
try:
    func, args = pickle.load(sys.stdin.buffer)
except Exception as exc:
    result = ("error", f"the function is not importable by name in a fresh process ({type(exc).__name__}: {exc}): "
                       "pass a module-level function of the project")
else:
    try:
        result = ("ok", func(*args))
    except BaseException as exc:
        result = ("error", f"{type(exc).__name__}: {exc}\\n{traceback.format_exc()}")
with open(out, "wb") as f:
    pickle.dump(result, f)
"""


def run_isolated(func, *args, env: dict[str, str] | None = None):
    """func(*args) in a fresh Python process; its result comes back, its failure is raised here (RuntimeError).

    func must be importable by name in that process (a module-level function of the project or the standard
    library, pickled by reference). The child's output goes to this process's; an interrupt here kills it.
    `env`: variables set for the child only, over this process's environment."""
    if getattr(func, "__module__", None) in (None, "__main__"):
        raise ValueError(f"{func!r} is defined in a script: it must be importable by name in a fresh process")
    try:
        payload = pickle.dumps((func, args))
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ValueError(f"{func!r} cannot go to a fresh process ({exc}): pass a module-level function") from None
    with tempfile.TemporaryDirectory(prefix="looper-stage-") as tmp:
        out = Path(tmp) / "result.pickle"
        child_env = {**os.environ, **env} if env else None
        proc = subprocess.run([sys.executable, "-c", CHILD, str(out)], input=payload, env=child_env, check=False)
        status, value = pickle.loads(out.read_bytes()) if out.is_file() else ("error", "no result written")
    if status != "ok":
        name = getattr(func, "__name__", func)
        raise RuntimeError(f"{name} failed in its own process (exit {proc.returncode}): {value}")
    return value
