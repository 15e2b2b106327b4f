"""The one-node topology: docker-compose.yml against the Compose Specification, and the images' basics.

No Docker engine (nor docker compose v2) runs here, so the images are not built and `docker compose config`
is not run. Instead the file is validated against the official compose-spec JSON Schema (the copy that
check-jsonschema, a dev dependency, ships), and its profiles are resolved the way docker compose v2 resolves
them (compose-go's loader: services outside the active profiles are disabled; a `depends_on` on a disabled
service is an error unless it says `required: false`). The same topology runs as processes on loopback in
tests/test_pipeline.py."""

import copy
import importlib.resources
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
HOST = "reward-service"  # the host name the worker and the trainer call
TOKEN = "/run/secrets/looper_service_token"


def compose_spec_schema() -> dict:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))


def schema_errors(document: dict) -> list[str]:
    schema = compose_spec_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # resolves the x-* anchors and `<<` merge keys


def dotenv_profiles() -> list[str]:
    """COMPOSE_PROFILES from .env beside the compose file: what a plain `docker compose up` activates."""
    for line in (ROOT / ".env").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "COMPOSE_PROFILES":
            return [p.strip() for p in value.split(",") if p.strip()]
    return []


def resolve(profiles: list[str]) -> dict:
    """The services docker compose v2 runs with these profiles active, depends_on pruned as it prunes them."""
    services = raw()["services"]
    enabled = {n: s for n, s in services.items() if not s.get("profiles") or set(s["profiles"]) & set(profiles)}
    resolved = {}
    for name, service in enabled.items():
        depends_on = {}
        for dependency, spec in service.get("depends_on", {}).items():
            if dependency in enabled:
                depends_on[dependency] = spec
                continue
            assert dependency in services, f"{name} depends on undefined service {dependency}"
            assert spec.get("required", True) is False, f"{dependency} is required by {name} but is disabled"
        resolved[name] = {**service, "depends_on": depends_on} if "depends_on" in service else service
    return resolved


def reward_services(services: dict) -> dict:
    return {n: s for n, s in services.items() if "readyz" in " ".join(s.get("healthcheck", {}).get("test", []))}


def host_names(name: str, service: dict) -> set[str]:
    aliases = {a for net in (service.get("networks") or {}).values() for a in (net or {}).get("aliases", [])}
    return {name} | aliases


def test_compose_file_follows_the_compose_specification():
    assert schema_errors(raw()) == []


def test_the_schema_check_is_strict():
    document = raw()
    bad = copy.deepcopy(document)
    bad["services"]["trainer"]["depends_on"]["reward-service"]["required"] = "no"
    assert schema_errors(bad)
    bad = copy.deepcopy(document)
    bad["services"]["reward-service"]["healthchek"] = bad["services"]["reward-service"].pop("healthcheck")
    assert schema_errors(bad)


@pytest.mark.parametrize(
    "profiles, dockerfile, image",
    [
        (dotenv_profiles(), "docker/service.Dockerfile", "looper-service:"),  # `docker compose up`
        (["stub"], "docker/stub.Dockerfile", "looper-stub:"),  # `docker compose --profile stub up`
    ],
    ids=["default", "stub"],
)
def test_each_profile_runs_one_reward_service_the_clients_wait_for(profiles, dockerfile, image):
    services = resolve(profiles)
    assert set(services) - {"rollout-worker", "trainer"} == set(reward_services(services))
    [(name, service)] = reward_services(services).items()
    assert service["build"]["dockerfile"] == dockerfile
    assert service["image"].startswith(image)
    assert HOST in host_names(name, service)
    assert [s if isinstance(s, str) else s["source"] for s in service["secrets"]] == ["looper_service_token"]
    assert all(p.startswith("127.0.0.1:") for p in service["ports"])  # not exposed beyond the node
    for client in ("rollout-worker", "trainer"):
        assert services[client]["depends_on"] == {name: {"condition": "service_healthy", "required": False}}
        assert f"http://{HOST}:8000" in " ".join(services[client]["command"])


def test_the_default_profile_is_the_closed_service():
    assert dotenv_profiles() == ["private"]
    assert raw()["services"]["reward-service"]["profiles"] == ["private"]
    assert raw()["services"]["reward-service-stub"]["profiles"] == ["stub"]
    assert reward_services(resolve([])) == {}  # no profile, no service: hence the default in .env


def test_the_clients_get_gpus_the_token_secret_and_the_mounts():
    services = raw()["services"]
    assert set(raw()["secrets"]) == {"looper_service_token"}
    assert raw()["secrets"]["looper_service_token"]["file"] == "./secrets/looper_service_token"
    for name in ("rollout-worker", "trainer"):
        client = services[name]
        devices = client["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        assert client["secrets"] == ["looper_service_token"]
        assert f"--token-file {TOKEN}" in " ".join(client["command"])
        assert {v.split(":")[1] for v in client["volumes"]} >= {"/data", "/runs", "/models", "/config"}
    text = COMPOSE_FILE.read_text()
    assert "LOOPER_SERVICE_TOKEN" not in text  # the token only ever comes from the secret file
    assert "LOOPER_SERVICE_VARIANT" not in text + (ROOT / "README.md").read_text()  # profiles replaced it


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


STUB_SERVE = """
import importlib.abc, runpy, sys
allowed = set(sys.argv[1].split(","))

class OnlyTheStubsFiles(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith("reward_service.") and name.split(".")[1] not in allowed:
            raise ImportError(f"{name}: not in the stub image")
        return None

sys.meta_path.insert(0, OnlyTheStubsFiles())
sys.argv = ["looper", *sys.argv[2:]]
runpy.run_module("looper.cli", run_name="__main__")
"""


def test_looper_serve_stub_runs_on_the_files_the_stub_image_copies(tmp_path):
    """The image's own entry point (`looper serve --stub`, one worker and several), with every reward_service
    module the stub Dockerfile does not copy impossible to import: a file missing from its COPY line fails
    here, not in a user's `docker compose --profile stub up`."""
    import subprocess
    import sys
    import time

    import httpx

    from looper_common.local_service import free_port

    text = (ROOT / "docker" / "stub.Dockerfile").read_text()
    copied = re.search(r"^COPY ((?:reward_service/\S+ )+)\./reward_service/$", text, re.M).group(1).split()
    modules = ",".join(Path(f).stem for f in copied)
    for workers in ("1", "2"):
        port = free_port()
        args = [
            "serve",
            "--stub",
            "--insecure-no-auth",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            workers,
        ]
        log = (tmp_path / f"serve-{workers}.log").open("w")
        process = subprocess.Popen([sys.executable, "-c", STUB_SERVE, modules, *args], stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, (tmp_path / f"serve-{workers}.log").read_text()[-2000:]
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "looper serve --stub never became ready"
                time.sleep(0.1)
        finally:
            process.terminate()
            process.wait(timeout=30)
            log.close()
