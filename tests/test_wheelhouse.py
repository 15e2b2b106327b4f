"""docker/wheelhouse.py with pip for real, offline: tiny packages built here stand in for vLLM, torch and a
dependency the two sides pin differently; the wheelhouse is built from them and installed from its lock."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import load_script


def project(folder: Path, name: str, version: str, dependencies=(), extras=None) -> Path:
    folder.mkdir(parents=True)
    (folder / name.replace("-", "_")).mkdir()
    (folder / name.replace("-", "_") / "__init__.py").write_text(f"VERSION = {version!r}\n")
    optional = "".join(f"{k} = {json.dumps(v)}\n" for k, v in (extras or {}).items())
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(f"""\
            [build-system]
            requires = ["setuptools>=69"]
            build-backend = "setuptools.build_meta"
            [project]
            name = "{name}"
            version = "{version}"
            dependencies = {json.dumps(list(dependencies))}
            [project.optional-dependencies]
        """)
        + optional
    )
    return folder


def wheel(source: Path, index: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(index),
            str(source),
        ],
        check=True,
    )


def test_the_project_s_pins_win_and_the_lock_installs_offline(tmp_path):
    index = tmp_path / "index"
    wheel(project(tmp_path / "src/vllm", "vllm", "0.1", ["common==1.0", "torch==1.0"]), index)
    wheel(project(tmp_path / "src/torch", "torch", "1.0"), index)
    for version in ("1.0", "2.0"):
        wheel(project(tmp_path / f"src/common-{version}", "common", version), index)
    wheel(project(tmp_path / "src/extra-dep", "extra-dep", "3.0"), index)
    app = project(
        tmp_path / "src/app",
        "tiny-app",
        "0.3",
        ["common==2.0"],
        # a self-reference, as `all` has; the CPU torch pin is left to vLLM's
        {"gpu": ["torch==2.13.0", "extra-dep==3.0"], "all": ["tiny-app[gpu]"]},
    )
    out = tmp_path / "wheelhouse"
    offline = ["--pip-arg=--no-index", f"--pip-arg=--find-links={index}"]
    manifest = load_script("docker/wheelhouse.py").main(
        ["build", "--out", str(out), "--vllm", "0.1", "--extras", "all", "--project", str(app), *offline]
    )

    lock = (out / "requirements.lock").read_text().split()
    assert lock == ["common==2.0", "extra-dep==3.0", "tiny-app==0.3", "torch==1.0", "vllm==0.1"]
    assert manifest["overridden_by_the_project"] == [{"package": "common", "vllm_resolved": "1.0", "kept": "2.0"}]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert len(list(out.glob("*.whl"))) == 5  # one wheel a package, nothing else

    # the documented command, with no index at all
    target = tmp_path / "site"
    command = manifest["install"].replace("python", sys.executable, 1).split() + ["--target", str(target), "-q"]
    subprocess.run(command, check=True)
    installed = sorted(p.name for p in target.glob("*.dist-info"))
    assert installed == [
        "common-2.0.dist-info", "extra_dep-3.0.dist-info", "tiny_app-0.3.dist-info", "torch-1.0.dist-info",
        "vllm-0.1.dist-info",
    ]  # fmt: skip


def test_the_project_requirements_leave_torch_to_vllm_and_refuse_an_unknown_extra(tmp_path):
    script = load_script("docker/wheelhouse.py")
    name, version, requirements = script.project_requirements(
        Path(__file__).parents[1] / "pyproject.toml", ["service", "train"]
    )
    assert name == "looper-math" and "fastapi==0.165.0" in requirements and "trl==1.16.0" in requirements
    assert not any(script.requirement_name(r) == "torch" for r in requirements)
    with pytest.raises(SystemExit, match="no extra 'gpu'"):
        script.project_requirements(Path(__file__).parents[1] / "pyproject.toml", ["gpu"])
