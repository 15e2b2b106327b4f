"""s_path's embedding mode with a real sentence-transformers model (MiniLM shipped by a PyPI package)."""

import random

import httpx
import pytest

from looper.samples import sample_group
from looper_common.local_service import local_service
from reward_service.embeddings import Embedder
from reward_service.regime_w import RegimeWScorer
from reward_service.settings import ServiceSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedder():
    return Embedder(None)


def test_paraphrases_are_closer_than_unrelated_texts(embedder):
    (sim,) = embedder.similarity_matrices(
        [
            [
                "Maya buys 3 packs of 4 markers, so she has 12 markers.",
                "Maya purchases three packs with four markers each: twelve markers in all.",
                "The train leaves the station at noon and arrives in the evening.",
            ]
        ]
    )
    assert sim[0][0] == pytest.approx(1.0, abs=1e-5)
    assert sim[0][1] > sim[0][2] + 0.2
    assert all(0.0 <= x <= 1.0 for row in sim for x in row)


def test_embedding_mode_scores_differ_from_lexical_and_stay_in_range(embedder):
    groups = [sample_group(random.Random(seed), f"q{seed}", words=80) for seed in range(3)]
    lexical = RegimeWScorer(ServiceSettings(require_auth=False)).score(groups)
    scorer = RegimeWScorer(ServiceSettings(require_auth=False, path_mode="embedding"))
    scorer.embedder = embedder
    embedded = scorer.score(groups)
    for lex, emb in zip(lexical, embedded, strict=True):
        assert emb.path_mode == "embedding" and lex.path_mode == "lexical"
        assert emb.s_path != lex.s_path
        assert emb.s_end == lex.s_end and emb.s_cf == lex.s_cf  # only the path term changes
        assert all(0.0 <= t.s_path <= 1.0 for t in emb.trajectories)


def test_service_in_embedding_mode_reports_it():
    request = sample_group(random.Random(7), "q7", words=60)
    with local_service(token=None, extra_args=["--path-mode", "embedding"]) as service:
        ready = httpx.get(f"{service.url}/readyz").json()
        body = httpx.post(f"{service.url}/v1/score", json=request.model_dump(mode="json"), timeout=60).json()
    assert ready["path_mode"] == "embedding"
    assert body["path_mode"] == "embedding"
    assert [t["arm_name"] for t in body["trajectories"]] == [t.arm_name for t in request.trajectories]
