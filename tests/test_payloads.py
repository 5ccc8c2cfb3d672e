"""What a database cannot store, found in TrustHub's answers before anything is written."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from trusthub_eval.payloads import MAX_DEPTH, MAX_STORED_CHARS, unstorable_problem

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "twilio" / "evaluation_create.json"

NUL = "it contains a NUL character"
SURROGATE = "it contains an unpaired surrogate"
NOT_FINITE = "it contains a number that is not finite (NaN or Infinity)"
TOO_DEEP = f"it is nested more than {MAX_DEPTH} levels deep"
TOO_LARGE = f"it is larger than {MAX_STORED_CHARS:,} characters of JSON"


def nested(levels: int) -> list:
    """A list nested ``levels`` deep: [[[...]]]."""
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def answer(**result_changes: object) -> dict:
    body = json.loads(FIXTURE.read_text())
    body["results"][-1].update(result_changes)
    return body


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (answer(), None),
        (answer(failure_reason="say \\u0000 in text"), None),  # a backslash, then "u0000"
        (answer(failure_reason="caf\u00e9 \U0001f600 ✓"), None),
        (answer(failure_reason="bad\x00byte"), NUL),
        (answer(**{"odd\x00key": 1}), NUL),
        (answer(valid=[{"object_field": ["nested", "\ud800"]}]), SURROGATE),
        (answer(failure_reason="\udfff and \x00"), NUL),  # both: the NUL is named
        # jsonb and JSON_VALID refuse them; json.dumps would write them anyway.
        ({"results": [{"f": float("nan")}]}, NOT_FINITE),
        (answer(valid=[{"x": float("-inf")}]), NOT_FINITE),
        # The answer, its results and a result hold ``valid``: 3 levels.
        (answer(valid=nested(MAX_DEPTH - 3)), None),
        (answer(valid=nested(MAX_DEPTH - 2)), TOO_DEEP),
        (answer(valid=nested(900)), TOO_DEEP),  # json.dumps still manages this one
        (answer(valid=nested(5_000)), TOO_DEEP),  # and not this one
        (answer(failure_reason="x" * MAX_STORED_CHARS), TOO_LARGE),
        (types.MappingProxyType({"a": ["\x00"]}), NUL),  # not a dict: the walk alone
    ],
)
def test_unstorable_text_is_found_wherever_it_is(payload, problem):
    assert unstorable_problem(payload) == problem


@pytest.mark.django_db
def test_an_answer_as_deep_as_allowed_is_stored_and_read_back_on_every_database():
    from tests.factories import make_profile
    from trusthub_eval.models import Evaluation

    payload = answer(valid=nested(MAX_DEPTH - 3))
    assert unstorable_problem(payload) is None
    profile = make_profile()
    evaluation = Evaluation.objects.create(
        customer_profile=profile, policy=profile.policy, trigger="cli", raw=payload
    )
    evaluation.refresh_from_db()
    assert evaluation.raw == payload
