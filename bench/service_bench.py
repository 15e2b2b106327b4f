"""Reward service throughput and latency: in-process scoring vs the real service over HTTP.

    python bench/service_bench.py                 # lexical + embedding, full run (a few minutes)
    python bench/service_bench.py --quick         # short run (about a minute)
    python bench/service_bench.py --modes lexical --duration 15 --workers 2

What it measures (groups of 11 realistic ~300-word trajectories, `looper.samples.sample_group`):

1. in-process: `RegimeWScorer.score` on already-parsed requests, one group per call and a batch per call;
   the baseline (one thread, no HTTP, no JSON).
2. HTTP: `looper serve` started as a separate process on 127.0.0.1 (token auth on, access log off);
   closed-loop load at 1, 16 and 64 concurrent clients (each a keep-alive connection that sends its next
   request when the previous answer arrives) on POST /v1/score (one group per request) and
   POST /v1/score/batch (several groups per request); then open-loop load (requests sent on a fixed
   schedule, latency counted from the scheduled send time, so queueing is not hidden) at a fixed offered
   rate spread over 64 connections.

The load generator is this one process: raw HTTP/1.1 over asyncio streams (uvloop when installed) with
pre-encoded requests, so a request costs it tens of microseconds; the table reports the CPU it used next
to the server's, so a starved server shows. Every run has a fixed warm-up and is bounded by a duration
(lexical) or a request count (embedding, ~18 texts/s on CPU). Each run's first response is checked
against the in-process result for the same group (lexical: equal, value for value).
Writes bench/results/service_bench.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from looper.samples import sample_group  # noqa: E402
from looper_common.local_service import local_service  # noqa: E402
from reward_service.regime_w import RegimeWScorer  # noqa: E402
from reward_service.settings import ServiceSettings  # noqa: E402
from shared_schemas.models import BatchScoreRequest, BatchScoreResponse, ScoreRequest, ScoreResponse  # noqa: E402

GROUP_SIZE = 11
console = Console(width=None if sys.stdout.isatty() else 160)


# --- samples ---------------------------------------------------------------------------------------


def make_groups(n: int, words: int, seed: int = 0) -> list[ScoreRequest]:
    rng = random.Random(seed)
    return [sample_group(rng, f"bench-{k}", words=words) for k in range(n)]


def sample_stats(groups: list[ScoreRequest]) -> dict:
    from reward_service.scoring import token_set

    texts = [t.text for g in groups for t in g.trajectories]
    words = [len(t.split()) for t in texts]
    distinct = [len(token_set(t)) for t in texts]
    return {
        "groups": len(groups),
        "trajectories_per_group": GROUP_SIZE,
        "mean_words": round(statistics.mean(words), 1),
        "mean_distinct_tokens": round(statistics.mean(distinct), 1),
        "min_distinct_tokens": min(distinct),
        "max_distinct_tokens": max(distinct),
        "mean_request_bytes": round(statistics.mean(len(g.model_dump_json()) for g in groups)),
    }


# --- results ---------------------------------------------------------------------------------------


@dataclass
class Run:
    mode: str
    target: str  # "in-process" or the route
    load: str  # "1 call/iter", "closed c=16", "open 1300 traj/s c=64"
    groups_per_call: int
    calls: int
    seconds: float
    traj_per_s: float
    calls_per_s: float
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    errors: int = 0
    client_cpu: float | None = None  # CPU seconds per wall second used by the load generator
    server_cpu: float | None = None  # the same for the service's processes
    other_cpu: float | None = None  # the same for everything else on the machine (should be ~0)
    offered_traj_per_s: float | None = None
    checked: str = ""
    extra: dict = field(default_factory=dict)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def latency_fields(latencies_s: list[float]) -> dict:
    values = sorted(x * 1e3 for x in latencies_s)
    return {
        "p50_ms": round(percentile(values, 50), 2),
        "p90_ms": round(percentile(values, 90), 2),
        "p99_ms": round(percentile(values, 99), 2),
        "max_ms": round(values[-1], 2) if values else float("nan"),
    }


# --- in-process ------------------------------------------------------------------------------------


def bench_in_process(
    mode: str, groups: list[ScoreRequest], per_call: int, warmup: int, duration: float, max_calls: int, embedder=None
) -> Run:
    settings = ServiceSettings(require_auth=False, path_mode=mode)
    scorer = RegimeWScorer(settings)
    if mode == "embedding":
        scorer.embedder = embedder
    calls = [groups[i : i + per_call] for i in range(0, len(groups) - per_call + 1, per_call)] or [groups[:per_call]]
    for k in range(warmup):
        scorer.score(calls[k % len(calls)])
    done, start = 0, time.perf_counter()
    cpu0, machine0 = time.process_time(), ServerCpu.machine_busy()
    while done < max_calls and (time.perf_counter() - start) < duration:
        scorer.score(calls[done % len(calls)])
        done += 1
    seconds = time.perf_counter() - start
    cpu = (time.process_time() - cpu0) / seconds
    other = max(0.0, (ServerCpu.machine_busy() - machine0) / seconds - cpu)
    return Run(
        mode=mode,
        target="in-process",
        load=f"{per_call} group{'s' if per_call > 1 else ''}/call",
        groups_per_call=per_call,
        calls=done,
        seconds=round(seconds, 3),
        traj_per_s=round(done * per_call * GROUP_SIZE / seconds, 1),
        calls_per_s=round(done / seconds, 1),
        client_cpu=round(cpu, 2),
        other_cpu=round(other, 2),
    )


# --- a lean HTTP/1.1 keep-alive client -------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection sending pre-encoded requests (Content-Length bodies only)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lowered = head.lower()
        at = lowered.find(b"\r\ncontent-length:")
        if at < 0:
            raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
        end = lowered.index(b"\r\n", at + 2)
        body = await self.reader.readexactly(int(lowered[at + 17 : end]))
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass


def encode_request(host: str, port: int, path: str, token: str | None, body: bytes) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    if token:
        head.append(f"Authorization: Bearer {token}")
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class ServerCpu:
    """CPU seconds used by the service process and its children (workers), and by the whole machine."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)

    def per_process(self) -> dict[int, float]:
        out = {}
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return out

    @staticmethod
    def machine_busy() -> float:
        t = psutil.cpu_times()
        return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


class CpuWindow:
    """CPU used during a measured window: this process, each service process, everything else."""

    def __init__(self, server: ServerCpu):
        self.server = server
        self.client0, self.server0 = time.process_time(), server.per_process()
        self.machine0, self.wall0 = server.machine_busy(), time.perf_counter()

    def stop(self) -> dict:
        wall = time.perf_counter() - self.wall0
        client = time.process_time() - self.client0
        now = self.server.per_process()
        per = [now[pid] - self.server0.get(pid, 0.0) for pid in sorted(now)]
        machine = self.server.machine_busy() - self.machine0
        return {
            "client": client / wall,
            "server": sum(per) / wall,
            "server_processes": [round(x / wall, 2) for x in per],
            "other": max(0.0, (machine - client - sum(per)) / wall),
        }


@dataclass
class HttpTarget:
    host: str
    port: int
    token: str | None
    server: ServerCpu


async def closed_loop(
    target: HttpTarget,
    requests: list[bytes],
    concurrency: int,
    *,
    warmup_s: float = 0.0,
    duration_s: float | None = None,
    warmup_requests: int = 0,
    count: int | None = None,
) -> tuple[list[float], int, float, dict, bytes, int]:
    """Each of `concurrency` connections sends its next request when its previous answer arrives.

    Duration-bound (`duration_s`): all clients run `warmup_s` unmeasured, then every answer that arrives
    within the next `duration_s` counts. Count-bound (`count`): `warmup_requests` sequential requests
    first, then exactly `count` requests, timed from the first send to the last answer.
    """
    conns = [Connection(target.host, target.port) for _ in range(concurrency)]
    await asyncio.gather(*(c.open() for c in conns))
    for k in range(warmup_requests):
        await conns[0].request(requests[(len(requests) - 1 - k) % len(requests)])
    latencies: list[float] = []
    errors = 0
    first: dict = {}
    state = {"measuring": count is not None, "issued": 0, "stop": False}

    async def worker(k: int, conn: Connection) -> None:
        nonlocal errors
        i = k
        while not state["stop"]:
            if count is not None:
                if state["issued"] >= count:
                    return
                state["issued"] += 1
            index = i % len(requests)
            i += concurrency
            t0 = time.perf_counter()
            status, body = await conn.request(requests[index])
            if state["measuring"] and not state["stop"]:
                latencies.append(time.perf_counter() - t0)
                errors += status != 200
                if "body" not in first:
                    first.update(body=body, index=index)

    tasks = [asyncio.create_task(worker(k, c)) for k, c in enumerate(conns)]
    if count is None:
        await asyncio.sleep(warmup_s)
    cpu, start = CpuWindow(target.server), time.perf_counter()
    state["measuring"] = True
    if count is None:
        await asyncio.sleep(duration_s)
    else:
        await asyncio.gather(*tasks)
    elapsed, used = time.perf_counter() - start, cpu.stop()
    state["stop"] = True
    await asyncio.gather(*tasks)
    await asyncio.gather(*(c.close() for c in conns))
    return latencies, errors, elapsed, used, first.get("body", b""), first.get("index", 0)


async def open_loop(
    target: HttpTarget, requests: list[bytes], rate_per_s: float, concurrency: int, warmup_s: float, duration_s: float
) -> tuple[list[float], int, float, dict, int]:
    """Requests scheduled at a constant rate; a free connection sends each; latency from its scheduled time."""
    conns = [Connection(target.host, target.port) for _ in range(concurrency)]
    await asyncio.gather(*(c.open() for c in conns))
    queue: asyncio.Queue = asyncio.Queue()
    latencies: list[float] = []
    errors = 0
    interval = 1.0 / rate_per_s
    begin = time.perf_counter() + 0.05
    measure_from, measure_to = begin + warmup_s, begin + warmup_s + duration_s

    async def scheduler() -> None:
        k = 0
        while True:
            due = begin + k * interval
            if due >= measure_to:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait((k, due))
            k += 1
        for _ in conns:
            queue.put_nowait(None)

    async def worker(conn: Connection) -> None:
        nonlocal errors
        while (item := await queue.get()) is not None:
            k, due = item
            status, _ = await conn.request(requests[k % len(requests)])
            if due >= measure_from:
                latencies.append(time.perf_counter() - due)
                errors += status != 200

    sched = asyncio.create_task(scheduler())
    workers = [asyncio.create_task(worker(c)) for c in conns]
    await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
    cpu, start = CpuWindow(target.server), time.perf_counter()
    await sched
    await asyncio.gather(*workers)
    elapsed, used = time.perf_counter() - start, cpu.stop()
    await asyncio.gather(*(c.close() for c in conns))
    return latencies, errors, elapsed, used, round(duration_s / interval)


# --- the whole benchmark ---------------------------------------------------------------------------


def check_response(mode: str, body: bytes, groups: list[ScoreRequest], expected: dict[str, ScoreResponse]) -> str:
    """The HTTP answer against the in-process answer for the same group(s)."""
    if not body:
        return "no response"
    results = (
        BatchScoreResponse.model_validate_json(body).results
        if body.startswith(b'{"results"')
        else [ScoreResponse.model_validate_json(body)]
    )
    if mode != "lexical":
        ok = all(r.path_mode == mode and len(r.trajectories) == GROUP_SIZE for r in results)
        return "valid" if ok else "INVALID"
    same = all(r == expected[r.question_id] for r in results)
    return "equal" if same else "DIFFERENT"


def run_http(args, mode: str, groups: list[ScoreRequest], expected: dict[str, ScoreResponse]) -> list[Run]:
    lexical = mode == "lexical"
    workers = args.workers if lexical else args.embedding_workers
    extra = ["--path-mode", mode, "--log-level", "warning"]
    extra += ["--workers", str(workers)] if workers != 1 else []
    runs: list[Run] = []
    with local_service(extra_args=extra, ready_timeout_s=300) as service:
        host, port = "127.0.0.1", int(service.url.rsplit(":", 1)[1])
        target = HttpTarget(host, port, service.token, ServerCpu(service.process.pid))
        single = [encode_request(host, port, "/v1/score", service.token, g.model_dump_json().encode()) for g in groups]
        b = args.batch_groups if lexical else args.embedding_batch_groups
        batches = [groups[i : i + b] for i in range(0, len(groups) - b + 1, b)]
        batch = [
            encode_request(
                host, port, "/v1/score/batch", service.token, BatchScoreRequest(groups=gs).model_dump_json().encode()
            )
            for gs in batches
        ]
        loop_runner = _runner(args)
        plans = [("/v1/score", 1, single), ("/v1/score/batch", b, batch)]
        for route, per_call, requests in plans:
            for concurrency in args.concurrency if lexical else args.embedding_concurrency:
                if lexical:
                    bounds = {"warmup_s": args.warmup, "duration_s": args.duration}
                else:  # count-bound: about `embedding_groups` groups, at least one request per client
                    count = max(concurrency, args.embedding_groups // per_call)
                    bounds = {"warmup_requests": args.embedding_warmup, "count": count}
                lat, errors, elapsed, used, first, index = loop_runner(
                    closed_loop(target, requests, concurrency, **bounds)
                )
                first_groups = batches[index] if per_call > 1 else [groups[index]]
                run = Run(
                    mode=mode,
                    target=route,
                    load=f"closed c={concurrency}",
                    groups_per_call=per_call,
                    calls=len(lat),
                    seconds=round(elapsed, 3),
                    traj_per_s=round(len(lat) * per_call * GROUP_SIZE / elapsed, 1),
                    calls_per_s=round(len(lat) / elapsed, 1),
                    errors=errors,
                    client_cpu=round(used["client"], 2),
                    server_cpu=round(used["server"], 2),
                    other_cpu=round(used["other"], 2),
                    checked=check_response(mode, first, first_groups, expected),
                    extra={"server_process_cpu": used["server_processes"]},
                    **latency_fields(lat),
                )
                runs.append(run)
                show_progress(run)
        if lexical and args.open_rate > 0:
            for route, per_call, requests in plans:
                rate = args.open_rate / (per_call * GROUP_SIZE)
                lat, errors, elapsed, used, scheduled = loop_runner(
                    open_loop(target, requests, rate, args.open_concurrency, args.warmup, args.duration)
                )
                run = Run(
                    mode=mode,
                    target=route,
                    load=f"open {args.open_rate:g} traj/s c={args.open_concurrency}",
                    groups_per_call=per_call,
                    calls=len(lat),
                    seconds=round(elapsed, 3),
                    traj_per_s=round(len(lat) * per_call * GROUP_SIZE / elapsed, 1),
                    calls_per_s=round(len(lat) / elapsed, 1),
                    errors=errors,
                    client_cpu=round(used["client"], 2),
                    server_cpu=round(used["server"], 2),
                    other_cpu=round(used["other"], 2),
                    offered_traj_per_s=args.open_rate,
                    extra={"scheduled_requests": scheduled, "server_process_cpu": used["server_processes"]},
                    **latency_fields(lat),
                )
                runs.append(run)
                show_progress(run)
    return runs


def _runner(args):
    if args.uvloop:
        try:
            import uvloop

            return lambda coro: uvloop.run(coro)
        except ImportError:
            pass
    return asyncio.run


def show_progress(run: Run) -> None:
    lat = f" p50 {run.p50_ms} ms p99 {run.p99_ms} ms" if run.p50_ms is not None else ""
    console.print(f"  {run.mode:9} {run.target:16} {run.load:26} {run.traj_per_s:9.0f} traj/s{lat} {run.checked}")


COLUMNS = ("mode", "target", "load", "calls", "traj/s", "vs in-proc", "p50 ms", "p99 ms", "max ms")
COLUMNS += ("cpu cli/srv/oth", "err", "check")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def baselines(runs: list[dict]) -> dict[str, float]:
    """The in-process one-group-per-call rate of each mode: what the HTTP rates are compared with."""
    return {r["mode"]: r["traj_per_s"] for r in runs if r["target"] == "in-process" and r["groups_per_call"] == 1}


def render(results: dict) -> Table:
    base = baselines(results["runs"])
    table = Table(title=f"Reward service, groups of {GROUP_SIZE} x ~{results['config']['words']} words")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("mode", "target", "load", "check") else "right")
    for r in results["runs"]:
        ratio = r["traj_per_s"] / base[r["mode"]] if base.get(r["mode"]) else float("nan")
        cpu = "/".join("-" if r[k] is None else f"{r[k]:.2f}" for k in ("client_cpu", "server_cpu", "other_cpu"))
        table.add_row(
            r["mode"], r["target"], r["load"], str(r["calls"]), f"{r['traj_per_s']:,.0f}", f"{ratio:.2f}",
            _ms(r["p50_ms"]), _ms(r["p99_ms"]), _ms(r["max_ms"]), cpu, str(r["errors"]), r["checked"],
        )  # fmt: skip
    return table


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short run: 2 s per HTTP run, fewer embedding groups")
    p.add_argument("--modes", default="lexical,embedding", help="comma list of lexical, embedding")
    p.add_argument("--concurrency", default="1,16,64", help="closed-loop client counts (comma list)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per lexical HTTP run")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each lexical run")
    p.add_argument("--in-process-s", type=float, default=5.0, help="seconds per lexical in-process run")
    p.add_argument("--batch-groups", type=int, default=8, help="groups per /v1/score/batch request")
    p.add_argument("--workers", type=int, default=2, help="`looper serve --workers` in lexical mode")
    p.add_argument(
        "--embedding-workers", type=int, default=1, help="the same in embedding mode (torch already uses every core)"
    )
    p.add_argument("--open-rate", type=float, default=1300.0, help="open-loop offered load, traj/s (0: skip)")
    p.add_argument("--open-concurrency", type=int, default=64)
    p.add_argument(
        "--embedding-groups", type=int, default=16, help="groups per embedding run (at least 1 request per client)"
    )
    p.add_argument("--embedding-warmup", type=int, default=2, help="sequential warm-up requests (embedding)")
    p.add_argument("--embedding-batch-groups", type=int, default=2, help="groups per batch request (embedding)")
    p.add_argument("--embedding-concurrency", default="1,16,64", help="closed-loop client counts (embedding)")
    p.add_argument("--words", type=int, default=300, help="words per trajectory")
    p.add_argument("--groups", type=int, default=128, help="distinct sample groups the requests rotate over")
    p.add_argument("--no-uvloop", dest="uvloop", action="store_false", help="plain asyncio loop in the client")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "service_bench.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.in_process_s = 2.0, 0.5, 2.0
        args.embedding_groups, args.embedding_warmup, args.embedding_concurrency = 8, 1, "1,16"
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.embedding_concurrency = [int(c) for c in args.embedding_concurrency.split(",")]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    groups = make_groups(args.groups, args.words)
    stats = sample_stats(groups)
    console.print(f"[bold]samples[/bold] {stats}")
    config = {k: v for k, v in vars(args).items() if k != "out"}
    results = {"machine": machine(), "config": config, "samples": stats, "runs": []}
    for mode in args.modes:
        console.print(f"[bold]{mode}[/bold]: in-process")
        embedder = None
        if mode == "embedding":
            from reward_service.embeddings import Embedder

            embedder = Embedder(None)
        scorer = RegimeWScorer(ServiceSettings(require_auth=False, path_mode=mode))
        scorer.embedder = embedder
        expected = {r.question_id: r for r in scorer.score(groups)} if mode == "lexical" else {}
        for per_call in (1, args.batch_groups if mode == "lexical" else args.embedding_batch_groups):
            if mode == "lexical":
                run = bench_in_process(mode, groups, per_call, 20, args.in_process_s, 10**9)
            else:
                calls = max(2, args.embedding_groups // per_call)
                run = bench_in_process(mode, groups, per_call, args.embedding_warmup, 1e9, calls, embedder)
            results["runs"].append(asdict(run))
            show_progress(run)
        del embedder, scorer
        workers = args.workers if mode == "lexical" else args.embedding_workers
        console.print(f"[bold]{mode}[/bold]: HTTP ({workers} service worker{'s' * (workers > 1)})")
        results["runs"] += [asdict(r) for r in run_http(args, mode, groups, expected)]
    console.print(render(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return results


if __name__ == "__main__":
    main()
