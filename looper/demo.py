"""The main job until the full pipeline lands: start the service, score a sample group, show it."""

from __future__ import annotations

import asyncio
import random

from rich.console import Console
from rich.table import Table

from looper.samples import sample_group
from looper_common.local_service import local_service
from rollout_worker.client import ClientConfig, ServiceClient


async def _score(url: str, token: str, stub: bool):
    async with ServiceClient(ClientConfig(url=url, token=token)) as client:
        arms = await client.arms()
        request = sample_group(random.Random(1), "demo-1", words=120, arms=[a.name for a in arms.arms])
        return request, await client.score(request)


def run_demo(stub: bool = False, port: int = 0) -> None:
    console = Console(width=max(Console().width, 100))
    with local_service(stub=stub, port=port) as service:
        console.print(f"service up at {service.url} (token generated for this run)")
        request, result = asyncio.run(_score(service.url, service.token, stub))
    console.print(f"[bold]Question[/bold] {request.question}\n[bold]Gold[/bold] {request.gold_answer}")
    table = Table(title=f"POST /v1/score  ({result.scorer_version}, path mode {result.path_mode})")
    table.add_column("arm", no_wrap=True)
    for column in ("answer", "correct", "s_end_i", "s_path_i", "s_cf_i", "quality", "reward"):
        table.add_column(column, justify="right")
    for t in result.trajectories:
        table.add_row(
            t.arm_name,
            t.answer or "-",
            "yes" if t.correct else "no",
            f"{t.s_end:.3f}",
            f"{t.s_path:.3f}",
            f"{t.s_cf:.3f}",
            f"{t.quality:.3f}",
            f"{t.reward:.4f}",
        )
    console.print(table)
    console.print(
        f"group: s_end={result.s_end:.3f} s_path={result.s_path:.3f} s_cf={result.s_cf:.3f} "
        f"s_wm={result.s_wm:.3f} group_reward={result.group_reward:.4f}"
    )
