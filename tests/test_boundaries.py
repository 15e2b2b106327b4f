"""The open/closed boundary: public packages never import the service, and the stub runs without the private half."""

from __future__ import annotations

import ast
import asyncio
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from looper_common.local_service import local_service
from rollout_worker.client import ClientConfig, ServiceClient
from shared_schemas.models import ScoreRequest, Trajectory

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_PACKAGES = ("rollout_worker", "trainer", "looper_common", "shared_schemas")
PRIVATE_MODULES = (
    "reward_service.scoring",
    "reward_service.arms",
    "reward_service.regime_w",
    "reward_service.embeddings",
)

# A meta-path finder that refuses the given modules (and their submodules), recording every attempt.
FORBID = textwrap.dedent(
    """
    import importlib.abc, json, sys

    FORBIDDEN = tuple(json.loads(sys.argv[1]))
    ATTEMPTS = []

    class Forbid(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                ATTEMPTS.append(name)
                raise ImportError(f"forbidden import: {name}")
            return None

    sys.meta_path.insert(0, Forbid())
    """
)


def run_python(code: str, forbidden, timeout: float = 120) -> dict:
    """Run `code` under the forbidding hook in a fresh interpreter; it prints one JSON object last."""
    result = subprocess.run(
        [sys.executable, "-c", FORBID + textwrap.dedent(code), json.dumps(list(forbidden))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) for every import, and for importlib.import_module / __import__ with a literal name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def public_files() -> list[Path]:
    files = sorted(p for package in PUBLIC_PACKAGES for p in (ROOT / package).rglob("*.py"))
    assert {p.relative_to(ROOT).parts[0] for p in files} == set(PUBLIC_PACKAGES)
    return files


def test_public_packages_never_import_the_service_statically():
    offenders = []
    for path in public_files():
        for line, module in imported_modules(ast.parse(path.read_text(), filename=str(path))):
            if module == "reward_service" or module.startswith("reward_service."):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    assert not offenders, offenders


def test_the_static_scan_sees_an_import_of_the_service():
    code = "import reward_service.app\nfrom reward_service import scoring\nimportlib.import_module('reward_service.x')"
    assert [m for _, m in imported_modules(ast.parse(code))] == [
        "reward_service.app",
        "reward_service",
        "reward_service.x",
    ]


def test_public_packages_import_without_the_service_at_runtime():
    report = run_python(
        """
        import importlib, json, pkgutil
        imported, failed = [], {}
        for package in ("rollout_worker", "trainer", "looper_common", "shared_schemas"):
            module = importlib.import_module(package)
            imported.append(package)
            for info in pkgutil.walk_packages(module.__path__, package + "."):
                try:
                    importlib.import_module(info.name)
                    imported.append(info.name)
                except ImportError as exc:
                    failed[info.name] = f"{type(exc).__name__}: {exc}"
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "reward_service")
        print(json.dumps({"imported": imported, "failed": failed, "attempts": ATTEMPTS, "loaded": loaded}))
        """,
        forbidden=["reward_service"],
    )
    assert report["attempts"] == [], report
    assert report["loaded"] == []
    assert not report["failed"], report["failed"]
    assert {"rollout_worker.client", "shared_schemas.models", "shared_schemas.answers", "trainer"} <= set(
        report["imported"]
    )


def test_the_runtime_hook_does_forbid():
    report = run_python(
        """
        try:
            import reward_service.app
            outcome = "imported"
        except ImportError as exc:
            outcome = str(exc)
        print(json.dumps({"outcome": outcome, "attempts": ATTEMPTS}))
        """,
        forbidden=["reward_service"],
    )
    assert report["outcome"] == "forbidden import: reward_service"
    assert report["attempts"] == ["reward_service"]


def test_stub_service_runs_without_the_private_modules():
    """create_app(stub) under uvicorn, scored over HTTP, with Regime W's modules impossible to import."""
    report = run_python(
        """
        import random, threading, time
        import httpx, uvicorn
        from looper_common.local_service import free_port
        from looper.samples import sample_group
        from reward_service.app import create_app
        from reward_service.settings import ServiceSettings

        try:
            create_app(ServiceSettings(stub=False, require_auth=False))
            regime_w = "built"
        except ImportError as exc:
            regime_w = str(exc)

        app = create_app(ServiceSettings(stub=True, require_auth=False))
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "stub app never became ready"
            time.sleep(0.05)
        group = sample_group(random.Random(1), "boundary", words=30)
        score = httpx.post(f"{url}/v1/score", content=group.model_dump_json(),
                           headers={"Content-Type": "application/json"})
        arms = httpx.get(f"{url}/v1/arms").json()
        server.should_exit = True
        thread.join(10)
        loaded = sorted(m for m in sys.modules if m.startswith("reward_service"))
        print(json.dumps({"regime_w": regime_w, "status": score.status_code, "score": score.json(),
                          "arms": [a["name"] for a in arms["arms"]], "gold": group.gold_answer,
                          "attempts": sorted(set(ATTEMPTS)), "loaded": loaded}))
        """,
        forbidden=PRIVATE_MODULES,
    )
    assert report["regime_w"].startswith("forbidden import: reward_service."), report["regime_w"]
    assert report["status"] == 200, report["score"]
    score = report["score"]
    assert score["question_id"] == "boundary" and score["scorer_version"].startswith("stub-")
    assert [t["correct"] for t in score["trajectories"]] == [
        t["answer"] == report["gold"] for t in score["trajectories"]
    ]
    assert report["arms"] == [f"sample_{k}" for k in range(11)]
    assert not set(report["loaded"]) & set(PRIVATE_MODULES)
    assert set(report["attempts"]) <= set(PRIVATE_MODULES)  # only the deliberate Regime W attempt


@pytest.fixture(scope="module")
def release_tree(tmp_path_factory) -> Path:
    """A copy of the code as an open-source release ships it: the private scorer modules deleted."""
    tree = tmp_path_factory.mktemp("release")
    for package in (*PUBLIC_PACKAGES, "reward_service", "looper"):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    for module in PRIVATE_MODULES:
        (tree / (module.replace(".", "/") + ".py")).unlink()
    return tree


def test_looper_serve_stub_runs_from_a_tree_without_the_private_files(release_tree, monkeypatch):
    """`looper serve --stub` from the release tree, driven end to end by the public client."""
    monkeypatch.chdir(release_tree)  # `python -m looper.cli` puts the cwd first on sys.path
    monkeypatch.setenv("PYTHONPATH", str(release_tree))
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import reward_service.app as a, reward_service.stub as s; print(a.__file__, s.__file__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert all(path.startswith(str(release_tree)) for path in probe.stdout.split())

    async def drive(url: str, token: str):
        async with ServiceClient(ClientConfig(url=url, token=token, max_retries=0)) as client:
            arm_set = await client.arms()
            request = ScoreRequest(
                question_id="release",
                question="What is 6 times 7?",
                gold_answer="42",
                trajectories=[
                    Trajectory(arm_name=arm.name, text=f"6 x 7 = 42\nAnswer: {40 + k}")
                    for k, arm in enumerate(arm_set.arms[:3])
                ],
            )
            return await client.score(request)

    with local_service(stub=True, log_path=release_tree / "serve.log", ready_timeout_s=60) as service:
        result = asyncio.run(drive(service.url, service.token))
    assert [t.correct for t in result.trajectories] == [False, False, True]
    assert result.scorer_version.startswith("stub-")
    assert "Traceback" not in (release_tree / "serve.log").read_text()


def imported_packages(package: str) -> set[str]:
    """The top-level packages that the modules of `package` import (read from their source, every import)."""
    import ast

    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


# each package and the packages it must not import: the layers, top down, are looper (the CLI) > trainer >
# rollout_worker > looper_common > shared_schemas, with reward_service on shared_schemas alone
LAYERS = {
    "trainer": {"looper", "reward_service", "experiments", "bench"},
    "rollout_worker": {"trainer", "looper", "reward_service", "experiments", "bench"},
    "looper_common": {"rollout_worker", "trainer", "looper", "reward_service", "experiments", "bench"},
    "shared_schemas": {"looper_common", "rollout_worker", "trainer", "looper", "reward_service"},
    "reward_service": {"looper_common", "rollout_worker", "trainer", "looper", "experiments", "bench"},
}


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_package_imports_one_above_it(package):
    assert not imported_packages(package) & LAYERS[package]


def test_the_cli_of_a_client_install_runs_without_the_service():
    """The trainer and worker images ship no reward_service: every command but `serve` must still run there,
    and `serve` says what to run instead."""
    report = run_python(
        """
        import contextlib, io
        from looper.cli import main

        def run(*argv):
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                try:
                    main(list(argv))
                except SystemExit as exc:
                    return exc.code, out.getvalue()
            return 0, out.getvalue()

        top, rollouts, serve = run("--help"), run("rollouts", "--help"), run("serve", "--port", "1")
        print(json.dumps({"top": top, "rollouts": rollouts[0], "serve": [str(serve[0]), serve[1]],
                          "attempts": ATTEMPTS}))
        """,
        ["reward_service"],
    )
    assert report["top"][0] == 0 and "rollouts" in report["top"][1] and report["rollouts"] == 0
    assert "looper serve: the reward service is not installed here" in report["serve"][0]
    assert set(report["attempts"]) == {"reward_service"}  # tried (once per parser built), and nothing else
