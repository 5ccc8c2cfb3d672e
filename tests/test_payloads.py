"""What a database cannot store, found in TrustHub's answers before anything is written."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from trusthub_eval.payloads import unstorable_problem

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "twilio" / "evaluation_create.json"

NUL = "it contains a NUL character"
SURROGATE = "it contains an unpaired surrogate"


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
        ({"results": [{"f": float("nan")}]}, None),
        (types.MappingProxyType({"a": ["\x00"]}), NUL),  # not a dict: the walk alone
    ],
)
def test_unstorable_text_is_found_wherever_it_is(payload, problem):
    assert unstorable_problem(payload) == problem
