"""Real services for the tests: `looper serve` child processes on 127.0.0.1 (no TestClient, no mocks).

`regime_w_service` and `stub_service` live for the whole session; `service` runs a test against both,
so the client test-suite proves the public code works against the stub the open-source release ships.
Each service's stdout/stderr goes to a log file (`service.log_path`) so tests can read what it printed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from looper_common.local_service import LocalService, local_service


@dataclass(frozen=True)
class RunningService:
    name: str
    url: str
    token: str | None
    log_path: Path
    local: LocalService

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, timeout: float = 30.0, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_with(self, text: str, timeout: float = 10.0) -> str:
        """The log once it holds `text` (a request's log line is written just after its response is sent)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return log


@contextmanager
def running_service(name: str, log_dir: Path, **kwargs) -> Iterator[RunningService]:
    log_path = log_dir / f"{name}.log"
    with local_service(log_path=log_path, ready_timeout_s=60.0, **kwargs) as local:
        yield RunningService(name=name, url=local.url, token=local.token, log_path=log_path, local=local)


@pytest.fixture(scope="session")
def service_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def start_service(service_logs):
    """`start_service(name, **local_service_kwargs)`: a context manager for one more service, logged."""

    def start(name: str, **kwargs):
        return running_service(name, service_logs, **kwargs)

    return start


@pytest.fixture(scope="session")
def regime_w_service(service_logs) -> Iterator[RunningService]:
    with running_service("regime_w", service_logs, stub=False) as service:
        yield service


@pytest.fixture(scope="session")
def v2_service(service_logs) -> Iterator[RunningService]:
    with running_service("regime_w_v2", service_logs, scorer="regime_w_v2") as service:
        yield service


@pytest.fixture(scope="session")
def stub_service(service_logs) -> Iterator[RunningService]:
    with running_service("stub", service_logs, stub=True) as service:
        yield service


@pytest.fixture(params=["regime_w", "stub"])
def service(request) -> RunningService:
    """The same test against the real Regime W service and the public stub."""
    return request.getfixturevalue(f"{request.param}_service")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random-weight Llama with a real BPE tokenizer and chat template, built offline."""
    from looper.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def format_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model taught to answer as '... Answer: N' (numbers mostly wrong, some agreeing)."""
    import shutil

    from looper.tiny_model import teach_format

    target = tmp_path_factory.mktemp("format") / "model"
    shutil.copytree(tiny_model, target)
    return teach_format(target)


@pytest.fixture(scope="module")
def one_torch_thread():
    """A tiny model gains nothing from threads; on a shared 2-core machine two OpenMP threads run ~8x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
