"""The one-node topology: docker-compose.yml validated by docker-compose itself, and the images' basics.

No Docker engine runs here, so the images are not built; `docker-compose config` (Debian's package,
installed by .ci/run) parses and validates the file. The same topology runs as processes on loopback in
tests/test_pipeline.py."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = shutil.which("docker-compose")


def config(variant: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LOOPER_SERVICE_VARIANT"}
    if variant:
        env["LOOPER_SERVICE_VARIANT"] = variant
    result = subprocess.run([COMPOSE, "-f", str(ROOT / "docker-compose.yml"), "config"], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose not installed (.ci/run installs it)")
def test_compose_file_is_valid_and_wires_the_node():
    services = config()["services"]
    assert set(services) == {"reward-service", "rollout-worker", "trainer"}
    service = services["reward-service"]
    assert service["build"]["dockerfile"] == "docker/service.Dockerfile"
    assert "readyz" in " ".join(service["healthcheck"]["test"])
    assert [s["source"] for s in service["secrets"]] == ["looper_service_token"]
    assert all(p.startswith("127.0.0.1:") for p in service["ports"])  # not exposed beyond the node
    for name in ("rollout-worker", "trainer"):
        client = services[name]
        assert client["depends_on"]["reward-service"]["condition"] == "service_healthy"
        devices = client["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        command = " ".join(client["command"])
        assert "--token-file /run/secrets/looper_service_token" in command
        assert "http://reward-service:8000" in command
        assert {v.split(":")[1] for v in client["volumes"]} >= {"/data", "/runs", "/models", "/config"}
    raw = (ROOT / "docker-compose.yml").read_text()
    assert "LOOPER_SERVICE_TOKEN" not in raw  # the token only ever comes from the secret file


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose not installed (.ci/run installs it)")
def test_the_stub_variant_swaps_in_the_public_image():
    service = config("stub")["services"]["reward-service"]
    assert service["build"]["dockerfile"] == "docker/stub.Dockerfile"
    assert service["image"].startswith("looper-stub:")


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "docker").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_images_run_as_a_non_root_user_from_pinned_bases(dockerfile):
    text = dockerfile.read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert ":" in base and not base.endswith(":latest"), base
    assert re.search(r"^USER (?!root)\S+", text, re.M), "images must not run as root"


def test_the_stub_image_copies_no_private_file():
    text = (ROOT / "docker" / "stub.Dockerfile").read_text()
    for private in ("arms.py", "scoring.py", "regime_w.py", "embeddings.py", "COPY reward_service ./"):
        assert private not in text
