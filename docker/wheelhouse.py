"""A wheelhouse for an offline GPU node: vLLM, the torch it pins, the project and all their dependencies as
wheels for one Python and platform, with a lock file to install them from in one command.

On a machine that reaches a package index:

    python docker/wheelhouse.py build --out wheelhouse --python 3.12 --vllm 0.26.0 --torch 2.11.0 \\
        [--extras service,train] [--platform manylinux_2_28_x86_64 ...] [--pip-arg=--extra-index-url=URL ...]

Carry the folder over, then on the GPU node (no network):

    python -m pip install --no-index --no-deps --find-links wheelhouse -r wheelhouse/requirements.lock

vLLM and the project pin some packages differently (vLLM 0.26 wants torch 2.11 and fastapi < 0.137, the
project pins fastapi 0.165 and, for CPU machines, torch 2.13), so no single resolution holds both. The two
sets are resolved apart, each by pip's resolver for the target Python and platform: vLLM's (`vllm`, `torch`)
and the project's (its dependencies and `--extras`, with torch left to vLLM's pin). The union keeps the
project's version wherever the two differ (vLLM's offline `LLM`, all the project uses, runs beside them: the
GPU runs in bench/README.md had vLLM 0.26 with fastapi 0.165), lists each package once in
`requirements.lock`, and is installed with `--no-deps` so that pip does not resolve again.
`manifest.json` records the inputs and every version the project's set overrode.

Without `--python`, the wheels are for the interpreter running this script (its Python and platform).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

# manylinux tags a CUDA node's glibc (>= 2.28) takes, newest first; pure-Python wheels match any platform
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in (35, 34, 31, 28, 27, 24, 17)]
PLATFORMS += ["manylinux2014_x86_64", "manylinux1_x86_64"]
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """PEP 503's normalised project name: `Typing_Extensions` and `typing-extensions` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = NAME.match(requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return canonical(match.group(1))


def project_requirements(pyproject: Path, extras: list[str]) -> tuple[str, str, list[str]]:
    """The project's name, version and requirements (dependencies plus `extras`, self-references expanded),
    without torch, which the GPU node takes at vLLM's pin."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    own = canonical(project["name"])
    requirements, seen, todo = list(project.get("dependencies", [])), set(), list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"{pyproject}: no extra {extra!r} (it has {', '.join(sorted(optional)) or 'none'})")
        seen.add(extra)
        for requirement in optional[extra]:
            if requirement_name(requirement) == own:  # e.g. looper-math[service,train]
                todo += re.findall(r"[A-Za-z0-9_-]+", requirement.split("[", 1)[1].split("]", 1)[0])
            else:
                requirements.append(requirement)
    kept = sorted({r.strip() for r in requirements if requirement_name(r) != "torch"}, key=str.lower)
    return project["name"], project["version"], kept


def wheel_versions(folder: Path) -> dict[str, tuple[str, Path]]:
    """Every wheel in `folder` by canonical name: (version, path)."""
    found = {}
    for wheel in sorted(folder.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        found[canonical(name)] = (version, wheel)
    return found


def union(vllm_set: dict, project_set: dict) -> tuple[dict, list[dict]]:
    """Each package once: the project's wheel where both sets have it at different versions (recorded)."""
    chosen, overrides = dict(vllm_set), []
    for name, (version, wheel) in project_set.items():
        if name in vllm_set and vllm_set[name][0] != version:
            overrides.append({"package": name, "vllm_resolved": vllm_set[name][0], "kept": version})
        chosen[name] = (version, wheel)
    return chosen, overrides


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def download(requirements: list[str], dest: Path, target: list[str], pip_args: list[str]) -> dict:
    pip("download", "--dest", str(dest), "--only-binary=:all:", *target, *pip_args, *requirements)
    return wheel_versions(dest)


def build(args) -> dict:
    root = Path(args.project).resolve()
    name, version, requirements = project_requirements(root / "pyproject.toml", args.extras)
    target = []
    if args.python:
        target = ["--python-version", args.python, "--implementation", "cp"]
        target += [f"--platform={p}" for p in (args.platform or PLATFORMS)]
    torch = [f"torch=={args.torch}"] if args.torch else ["torch"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wheelhouse-") as scratch:
        vllm_set = download([f"vllm=={args.vllm}", *torch], Path(scratch) / "vllm", target, args.pip_arg)
        project_set = download([*requirements, *torch], Path(scratch) / "project", target, args.pip_arg)
        chosen, overrides = union(vllm_set, project_set)
        for _, wheel in chosen.values():
            shutil.copy2(wheel, out / wheel.name)
    # the project itself, as a wheel (pure Python: one for every platform)
    pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out), str(root))
    lock = sorted([*(f"{package}=={v}" for package, (v, _) in chosen.items()), f"{canonical(name)}=={version}"])
    (out / "requirements.lock").write_text("\n".join(lock) + "\n")
    manifest = {
        "python": args.python or f"{sys.version_info.major}.{sys.version_info.minor}",
        "platforms": (args.platform or PLATFORMS) if args.python else "this interpreter's",
        "vllm": args.vllm,
        "torch": args.torch or "vLLM's pin",
        "project": f"{name}=={version}",
        "extras": args.extras,
        "overridden_by_the_project": overrides,
        "packages": len(lock),
        "install": f"python -m pip install --no-index --no-deps --find-links {out} -r {out}/requirements.lock",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{len(lock)} packages in {out}; {len(overrides)} overridden by the project's pins; install with:")
    print(f"  {manifest['install']}")
    return manifest


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="resolve and download every wheel into --out (needs a package index)")
    b.add_argument("--out", default="wheelhouse")
    b.add_argument("--vllm", required=True, help="vLLM's version, e.g. 0.26.0")
    b.add_argument("--torch", help="torch's version (default: whatever vLLM pins), e.g. 2.11.0")
    b.add_argument("--python", help="the GPU node's Python, e.g. 3.12 (default: this interpreter's)")
    b.add_argument("--platform", action="append", help=f"with --python; repeatable (default: {PLATFORMS[0]}, ...)")
    b.add_argument("--extras", type=lambda s: [e for e in s.split(",") if e], default=["service", "train"])
    b.add_argument("--project", default=str(Path(__file__).resolve().parents[1]), help="the project's root")
    b.add_argument("--pip-arg", action="append", default=[], help="passed to pip download, e.g. an index URL")
    args = parser.parse_args(argv)
    return build(args)


if __name__ == "__main__":
    main()
