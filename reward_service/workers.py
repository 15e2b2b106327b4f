"""`looper serve --workers N`: N service processes sharing one listening socket (POSIX, fork).

Scoring is CPU-bound Python, so one process uses one core; on a machine with more cores, N processes
answer up to N times as many requests. The parent forks the workers (each builds its own app and scorer,
so settings, the bearer token included, are inherited in memory: never passed on a command line or in the
environment, never logged), forwards SIGTERM/SIGINT to them, and stops them all if one dies so that a
supervisor restarts the service as a whole.

Where the OS has SO_REUSEPORT (Linux), each worker listens on its own socket bound to the same port and
the kernel spreads new connections over them. A single shared listening socket would not do: the first
worker to wake accepts a whole burst of connections, and keep-alive clients (a rollout worker's pool)
then stay on that one process. Each worker starts listening only once its scorer has loaded (uvicorn
finishes the app's lifespan startup before it listens), so no connection waits on a loading worker.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable

log = logging.getLogger("looper.service")


REUSE_PORT = hasattr(socket, "SO_REUSEPORT")


def bind_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to host:port, not yet listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _run_worker(make_app: Callable, sock: socket.socket | None, uvicorn_kwargs: dict) -> int:
    import uvicorn

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # uvicorn installs its own handlers in serve()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        if sock is None:  # its own socket in the port's SO_REUSEPORT group; uvicorn listens once loaded
            sock = bind_socket(uvicorn_kwargs["host"], uvicorn_kwargs["port"], reuse_port=True)
        uvicorn.Server(uvicorn.Config(make_app(), **uvicorn_kwargs)).run(sockets=[sock])
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        log.exception("worker %d failed", os.getpid())
        return 1


def serve_workers(make_app: Callable, workers: int, host: str, port: int, **uvicorn_kwargs) -> int:
    """Serve `make_app()` from `workers` forked processes on host:port; the exit code when all have stopped."""
    if not hasattr(os, "fork"):
        raise SystemExit("looper serve: --workers > 1 needs a POSIX system (fork)")
    # With SO_REUSEPORT the parent's socket only holds the port (and resolves port 0); it never listens, so
    # the kernel never hands it a connection. Without, it is the one listening socket the workers share.
    sock = bind_socket(host, port, reuse_port=REUSE_PORT)
    port = sock.getsockname()[1]
    if not REUSE_PORT:
        sock.listen(2048)
        sock.set_inheritable(True)
    children: set[int] = set()
    stopping = False

    def stop(signum=None, frame=None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            if REUSE_PORT:
                sock.close()
            os._exit(
                _run_worker(make_app, None if REUSE_PORT else sock, {"host": host, "port": port, **uvicorn_kwargs})
            )
        children.add(pid)
    log.info("serving on %s:%d with %d worker processes", host, port, workers)
    status = 0
    while children:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        children.discard(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if not stopping:
            log.error("worker %d exited with code %d; stopping the service", pid, code)
            status = code or 1
            stop()
    sock.close()
    return status
