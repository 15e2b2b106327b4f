"""LaTeX answers (`\\sqrt{16}`, `2^{10}`, `\\binom{5}{2}`) evaluated where a runaway can be stopped.

Two defences, because sympy can compute for ever on a few bytes (`\\binom{999999999999}{499999999999}`):
1. `within_work_bound` refuses, before any evaluation, what could be expensive: only whitelisted commands,
   integer literals of at most 15 digits, factorials of literals up to 50, binomials of literals up to 1000,
   at most two exponents, each an integer literal of at most 64 in size, braces nested at most 5 deep.
2. What passes is evaluated by math-verify in a `LatexPool` worker *process*. A call past its deadline has
   its worker killed and replaced, so it never outlives the deadline. (A thread cannot be stopped: a pool of
   threads would fill with runaways for good and every later LaTeX answer would read as no answer.)

Deadlines are budgets: `AnswerBudget` is the total LaTeX time one request may spend over all its answer
candidates; past it, the answer being read is "timed out" (`AnswerTimeout`), never a silent None.
The workers speak JSON lines over pipes (`python -m shared_schemas.latex`), so they import nothing of the
caller (not its `__main__`, not torch) and start the same way from a web server's threads, a forked service
worker or an evaluation script. Standard library only; math-verify is needed in the worker alone.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import json
import logging
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

log = logging.getLogger(__name__)

MAX_SEGMENT_CHARS = 120
MAX_LITERAL_DIGITS = 15
MAX_FACTORIAL = 50
MAX_BINOMIAL = 1000
MAX_EXPONENTS = 2
MAX_EXPONENT = 64
MAX_ROOT_INDEX = 64
MAX_BRACE_DEPTH = 5
# Without a request budget (offline evaluation), each LaTeX candidate gets this long.
DEFAULT_CALL_TIMEOUT_S = 5.0
WORKER_START_TIMEOUT_S = 120.0
CACHE_SIZE = 4096  # evaluated segments remembered (LRU)

_ALLOWED_COMMANDS = frozenset(
    "frac dfrac tfrac sqrt binom dbinom tbinom cdot times div pm pi left right text textbf textrm mathrm "
    "mathbf displaystyle quad qquad approx".split()
)
_COMMAND = re.compile(r"\\([A-Za-z]+)")
_SPACING = re.compile(r"\\[,;:! %$]")
_LITERAL = re.compile(r"\d+(?:\.\d+)?")
_FACTORIAL = re.compile(r"(?P<arg>\d+)?\s*!")
_BINOMIAL = re.compile(r"\\[dt]?binom\s*\{\s*(?P<n>\d+)\s*\}\s*\{\s*(?P<k>\d+)\s*\}")
# a bare exponent is every digit after the caret: the evaluator reads `2^10` as 1024 and `3^86011850` as that
# power, not LaTeX's 3^8 followed by 6011850
_EXPONENT = re.compile(r"\^\s*(?:\{\s*(?P<braced>-?\s*\d+)\s*\}|(?P<bare>\d+))")
_ROOT_INDEX = re.compile(r"\\sqrt\s*\[\s*(?P<index>\d+)\s*\]")


def within_work_bound(segment: str) -> bool:
    """True when evaluating `segment` is cheap whatever its numbers: the bound is on the work itself."""
    if len(segment) > MAX_SEGMENT_CHARS or "\\choose" in segment:
        return False
    if any(name not in _ALLOWED_COMMANDS for name in _COMMAND.findall(segment)):
        return False
    text = _SPACING.sub(" ", segment)
    depth = deepest = 0
    for char in text:
        depth += (char == "{") - (char == "}")
        if depth < 0:
            return False
        deepest = max(deepest, depth)
    if deepest > MAX_BRACE_DEPTH:
        return False
    if any(len(literal.split(".")[0]) > MAX_LITERAL_DIGITS for literal in _LITERAL.findall(text)):
        return False
    for factorial in _FACTORIAL.finditer(text):  # only of a literal: `(5+5)!` or `{x}!` could be anything
        if factorial.group("arg") is None or int(factorial.group("arg")) > MAX_FACTORIAL:
            return False
    binomials = list(_BINOMIAL.finditer(text))
    if text.count("binom") != len(binomials) or any(int(b.group("n")) > MAX_BINOMIAL for b in binomials):
        return False
    exponents = list(_EXPONENT.finditer(text))
    if text.count("^") > MAX_EXPONENTS or len(exponents) != text.count("^"):
        return False  # a tower, or an exponent that is not an integer literal
    if any(abs(int((e.group("braced") or e.group("bare")).replace(" ", ""))) > MAX_EXPONENT for e in exponents):
        return False
    roots = list(_ROOT_INDEX.finditer(text))
    if text.count("\\sqrt[") + text.count("\\sqrt [") != len(roots):
        return False
    return all(int(r.group("index")) <= MAX_ROOT_INDEX for r in roots)


# ---- the per-request budget


class AnswerTimeout(Exception):
    """A LaTeX answer could not be evaluated within the request's budget."""


@dataclass
class AnswerBudget:
    """The LaTeX evaluation time one request may spend, over all its answer candidates."""

    seconds: float
    spent: float = 0.0
    timeouts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def remaining(self) -> float:
        with self._lock:
            return max(0.0, self.seconds - self.spent)

    def charge(self, seconds: float, timed_out: bool) -> None:
        with self._lock:
            self.spent += seconds
            self.timeouts += timed_out


_BUDGET: contextvars.ContextVar[AnswerBudget | None] = contextvars.ContextVar("answer_budget", default=None)


@contextlib.contextmanager
def answer_budget(seconds: float) -> Iterator[AnswerBudget]:
    """Within this block (and the threads anyio starts from it), LaTeX answers share one budget."""
    budget = AnswerBudget(seconds)
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


# ---- the worker processes


class _Worker:
    def __init__(self, command: Sequence[str]):
        self.process = subprocess.Popen(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            # the caller's import path, so the worker imports this same module wherever the caller found it
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(os.path.abspath(p or ".") for p in sys.path),
            },
        )
        self._buffer = b""

    def send(self, payload: object) -> None:
        self.process.stdin.write(json.dumps(payload).encode() + b"\n")
        self.process.stdin.flush()

    def receive(self, timeout: float) -> object:
        """The next JSON line, or TimeoutError; EOFError when the worker died."""
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(Exception):
            self.process.wait(timeout=5)
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()


class LatexPool:
    """`workers` processes, each evaluating one request at a time; one past its deadline is killed and a
    fresh one started in the background (it joins the pool once it has imported math-verify, so no caller's
    deadline pays for a start). Thread-safe; started lazily."""

    def __init__(self, workers: int = 2, command: Sequence[str] | None = None):
        self.workers = workers
        self.command = list(command or [sys.executable, "-m", "shared_schemas.latex"])
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = False
        self._pid = os.getpid()
        self._closed = False
        self.killed = 0

    def _start_one(self, attempt: int = 0) -> None:
        def start() -> None:
            worker = None
            try:
                worker = _Worker(self.command)
                worker.receive(WORKER_START_TIMEOUT_S)  # its "ready" line, once its imports are done
            except (OSError, TimeoutError, EOFError, ValueError) as exc:
                if worker is not None:
                    worker.kill()
                delay = min(60.0, 2.0**attempt)
                log.error("a LaTeX worker failed to start (%s); trying again in %.0f s", type(exc).__name__, delay)
                time.sleep(delay)
                self._start_one(attempt + 1)
                return
            if self._closed:
                worker.kill()
            else:
                self._idle.put(worker)

        threading.Thread(target=start, name="latex-worker-start", daemon=True).start()

    def _ensure_started(self) -> None:
        with self._lock:
            if self._started and self._pid == os.getpid():
                return
            self._started, self._pid = True, os.getpid()
            self._idle = queue.SimpleQueue()  # a forked child does not own its parent's workers
            for _ in range(self.workers):
                self._start_one()

    def close(self) -> None:
        """Stop every idle worker (a busy one is stopped by its caller's deadline); no new ones start."""
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                return

    def wait_ready(self, timeout: float = WORKER_START_TIMEOUT_S) -> bool:
        """Block until one worker is ready (a service's start-up, before it takes requests)."""
        self._ensure_started()
        try:
            worker = self._idle.get(timeout=timeout)
        except queue.Empty:
            return False
        self._idle.put(worker)
        return True

    def call(self, argument: object, timeout: float) -> object:
        """The worker's answer for `argument`; AnswerTimeout when none came within `timeout` seconds."""
        self._ensure_started()
        deadline = time.monotonic() + timeout
        try:
            worker = self._idle.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise AnswerTimeout from None
        try:
            worker.send(argument)
            result = worker.receive(deadline - time.monotonic())
        except (TimeoutError, EOFError, OSError, ValueError) as exc:
            worker.kill()
            self.killed += 1
            if not self._closed:
                self._start_one()
            if isinstance(exc, TimeoutError):
                raise AnswerTimeout from None
            return None  # the worker died on this input: no answer, and a fresh worker for the next
        self._idle.put(worker)
        return result


_pool: LatexPool | None = None
_pool_lock = threading.Lock()


def latex_pool() -> LatexPool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = LatexPool()
        return _pool


_cache: OrderedDict[str, str | None] = OrderedDict()
_cache_lock = threading.Lock()


def math_verify_available() -> bool:
    return importlib.util.find_spec("math_verify") is not None


def evaluate_latex(segment: str) -> str | None:
    """The number a short LaTeX answer denotes (as text, unnormalised), None when it denotes none or is refused.

    Raises AnswerTimeout when the current budget (or, without one, DEFAULT_CALL_TIMEOUT_S) runs out first.
    """
    if not within_work_bound(segment) or not math_verify_available():
        return None
    with _cache_lock:
        if segment in _cache:
            _cache.move_to_end(segment)
            return _cache[segment]
    budget = _BUDGET.get()
    timeout = budget.remaining() if budget is not None else DEFAULT_CALL_TIMEOUT_S
    if timeout <= 0:
        budget.charge(0.0, True)
        raise AnswerTimeout
    start = time.monotonic()
    try:
        value = latex_pool().call(segment, timeout)
    except AnswerTimeout:
        if budget is not None:
            budget.charge(time.monotonic() - start, True)
        log.warning("a LaTeX answer was not evaluated within %.2f s", timeout)
        raise
    if budget is not None:
        budget.charge(time.monotonic() - start, False)
    value = value if isinstance(value, str) else None
    with _cache_lock:  # a group's answers repeat: each distinct one is evaluated once
        _cache[segment] = value
        if len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return value


# ---- the worker's side (python -m shared_schemas.latex)


def _math_verify_value(segment: str) -> str | None:
    try:
        from math_verify import parse

        parsed = parse(f"${segment}$", parsing_timeout=None)  # its signal-based timeout: only the main thread
        if not parsed:
            return None
        expr = parsed[0]
        if not getattr(expr, "is_number", False) or not expr.is_real:
            return None
        return str(Decimal(str(expr.evalf(30))))
    except Exception:  # noqa: BLE001 - any parser failure means "no answer"
        return None


def _serve() -> None:
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    try:
        import math_verify  # noqa: F401 - paid once, before this worker says it is ready
    except ImportError:
        pass
    _math_verify_value("\\frac{1}{2}")
    out = sys.stdout
    out.write('"ready"\n')
    out.flush()
    for line in sys.stdin:
        segment = json.loads(line)
        out.write(json.dumps(_math_verify_value(segment) if isinstance(segment, str) else None) + "\n")
        out.flush()


if __name__ == "__main__":
    _serve()
