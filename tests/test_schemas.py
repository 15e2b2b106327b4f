import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared_schemas import json_schemas
from shared_schemas.models import MAX_GROUP_SIZE, MAX_TEXT_CHARS, ArmSpec, ScoreRequest, Trajectory

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"


def test_committed_json_schemas_match_the_models():
    exported = json_schemas()
    on_disk = {p.name.removesuffix(".schema.json"): json.loads(p.read_text()) for p in SCHEMA_DIR.glob("*.schema.json")}
    assert on_disk.keys() == exported.keys()
    for name, schema in exported.items():
        assert on_disk[name] == schema, f"schemas/{name}.schema.json is stale: run `make schemas`"


def group(**overrides):
    body = {
        "question_id": "q1",
        "question": "How many?",
        "gold_answer": "3",
        "trajectories": [{"arm_name": "wolfram_0", "text": "Answer: 3"}],
    }
    body.update(overrides)
    return body


def test_a_valid_request_parses():
    request = ScoreRequest.model_validate(group())
    assert request.trajectories[0] == Trajectory(arm_name="wolfram_0", text="Answer: 3")


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"surprise": 1}, "surprise"),
        ({"question_id": ""}, "question_id"),
        ({"question": ""}, "question"),
        ({"trajectories": []}, "trajectories"),
        ({"trajectories": [{"arm_name": "a", "text": "x"}] * (MAX_GROUP_SIZE + 1)}, "trajectories"),
        ({"trajectories": [{"arm_name": "a", "text": "x" * (MAX_TEXT_CHARS + 1)}]}, "trajectories.0.text"),
        ({"trajectories": [{"arm_name": "bad name!", "text": "x"}]}, "trajectories.0.arm_name"),
        ({"trajectories": [{"arm_name": "a", "text": "x", "extra": 1}]}, "trajectories.0.extra"),
    ],
)
def test_strict_requests_reject(overrides, field):
    with pytest.raises(ValidationError) as info:
        ScoreRequest.model_validate(group(**overrides))
    assert field in {".".join(map(str, e["loc"])) for e in info.value.errors()}


def test_arm_spec_bounds():
    with pytest.raises(ValidationError):
        ArmSpec(name="a", role="compute", temperature=3.0, top_p=0.9, seed=1, system_prompt="", user_template="")
    with pytest.raises(ValidationError):
        ArmSpec(name="a", role="oracle", temperature=0.2, top_p=0.9, seed=1, system_prompt="", user_template="")
