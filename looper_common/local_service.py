"""Run `looper serve` as a child process on 127.0.0.1: the demo's and the tests' real service."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class LocalService:
    url: str
    token: str | None
    process: subprocess.Popen


@contextmanager
def local_service(
    *,
    stub: bool = False,
    scorer: str | None = None,
    port: int = 0,
    token: str | None = "generate",
    extra_args=(),
    ready_timeout_s: float = 120.0,
    log_path: str | os.PathLike | None = None,
):
    """Start the service, wait until /readyz answers 200, yield it, stop it. token=None serves it open;
    scorer: `--scorer NAME` (None: the service's default).

    log_path: append the child's stdout and stderr to this file (default: inherit the parent's).
    """
    port = port or free_port()
    token = secrets.token_urlsafe(32) if token == "generate" else token
    args = [sys.executable, "-m", "looper.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    args += ["--stub"] if stub else []
    args += ["--scorer", scorer] if scorer else []
    args += ["--insecure-no-auth"] if token is None else []
    args += list(extra_args)
    env = {k: v for k, v in os.environ.items() if k != "LOOPER_SERVICE_TOKEN"}
    if token is not None:
        env["LOOPER_SERVICE_TOKEN"] = token
    log_file = open(log_path, "ab") if log_path is not None else None
    try:
        process = subprocess.Popen(args, env=env, stdout=log_file, stderr=subprocess.STDOUT if log_file else None)
    except BaseException:
        if log_file is not None:
            log_file.close()
        raise
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"looper serve exited with code {process.returncode} before it was ready")
            try:
                if httpx.get(f"{url}/readyz", timeout=1.0, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"looper serve not ready after {ready_timeout_s:.0f}s")
            time.sleep(0.1)
        yield LocalService(url=url, token=token, process=process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log_file is not None:
            log_file.close()
