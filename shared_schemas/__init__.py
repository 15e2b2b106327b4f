"""Pydantic models and answer parsing shared by the service and its clients: the whole contract."""

from shared_schemas.answers import extract_answer, normalise_number, parse_gold
from shared_schemas.models import *  # noqa: F403
from shared_schemas.models import CONTRACT_MODELS, json_schemas

__all__ = ["CONTRACT_MODELS", "extract_answer", "json_schemas", "normalise_number", "parse_gold"]
