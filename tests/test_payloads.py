"""What a database cannot store, found in TrustHub's answers before anything is written."""

from __future__ import annotations

import datetime
import json
import types
from pathlib import Path

import pytest

from trusthub_eval.exceptions import ErrorKind, InvalidResponse
from trusthub_eval.kinds import RecordKind
from trusthub_eval.payloads import (
    MAX_DEPTH,
    MAX_STORED_CHARS,
    check_evaluation,
    identify_evaluation,
    unstorable_problem,
)

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


# Whose evaluation it is ------------------------------------------------------------------------

TWILIO = FIXTURE.parent
PRODUCT = "BU" + "a" * 32  # the spec's examples name this record
OTHER = "BU" + "b" * 32
POLICY = "RN" + "a" * 32


def product_evaluation(**changes: object) -> dict:
    body = json.loads((TWILIO / "trust_product_evaluation_create.json").read_text())
    body.update(changes)
    return body


def listed_product_evaluation(**changes: object) -> dict:
    listing = json.loads((TWILIO / "trust_product_evaluations_list.json").read_text())
    item = listing["results"][0]
    item.update(changes)
    return item


def test_a_trust_products_evaluation_is_checked_against_its_sid():
    payload = product_evaluation()

    assert (
        check_evaluation(
            payload, record_sid=PRODUCT, policy_sid=POLICY, record_kind=RecordKind.TRUST_PRODUCT
        )
        is payload
    )
    assert identify_evaluation(
        listed_product_evaluation(), record_sid=PRODUCT, record_kind=RecordKind.TRUST_PRODUCT
    ) == ("EL" + "a" * 32, POLICY, datetime.datetime(2020, 4, 28, 18, 14, 1, tzinfo=datetime.UTC))


@pytest.mark.parametrize(
    ("payload", "sid", "kind"),
    [
        # Another Trust Product's.
        (product_evaluation(), OTHER, RecordKind.TRUST_PRODUCT),
        # A Customer Profile's evaluation, when a Trust Product's was asked for.
        (answer(customer_profile_sid=PRODUCT), PRODUCT, RecordKind.TRUST_PRODUCT),
        # A Trust Product's evaluation, when a Customer Profile's was asked for.
        (product_evaluation(), PRODUCT, RecordKind.CUSTOMER_PROFILE),
    ],
    ids=["other-trust-product", "profile-field-for-a-product", "product-field-for-a-profile"],
)
@pytest.mark.parametrize("error", [ErrorKind.AMBIGUOUS, ErrorKind.PERMANENT])
def test_an_evaluation_of_another_record_is_unusable(payload, sid, kind, error):
    with pytest.raises(InvalidResponse) as info:
        check_evaluation(payload, record_sid=sid, policy_sid=POLICY, record_kind=kind, kind=error)

    assert (
        info.value.message
        == f"TrustHub's evaluation is unusable: it is not an evaluation of {sid}."
    )
    assert info.value.kind is error


@pytest.mark.parametrize(
    ("item", "sid", "kind"),
    [
        (listed_product_evaluation(), OTHER, RecordKind.TRUST_PRODUCT),
        (
            {**listed_product_evaluation(trust_product_sid=None), "customer_profile_sid": PRODUCT},
            PRODUCT,
            RecordKind.TRUST_PRODUCT,
        ),
        (listed_product_evaluation(), PRODUCT, RecordKind.CUSTOMER_PROFILE),
    ],
    ids=["other-trust-product", "profile-field-for-a-product", "product-field-for-a-profile"],
)
def test_a_listed_evaluation_of_another_record_makes_the_listing_unusable(item, sid, kind):
    with pytest.raises(InvalidResponse) as info:
        identify_evaluation(item, record_sid=sid, record_kind=kind)

    assert info.value.message == (
        f"TrustHub's list of evaluations is unusable: a listed evaluation is not one of {sid}."
    )
    assert info.value.kind is ErrorKind.RETRYABLE


def test_a_customer_profiles_evaluation_is_checked_as_before():
    # The default kind is the Customer Profile's: the fixture names BUaaaa… as its profile.
    payload = answer()

    assert check_evaluation(payload, record_sid=PRODUCT, policy_sid=POLICY) is payload
    with pytest.raises(InvalidResponse, match=f"it is not an evaluation of {OTHER}"):
        check_evaluation(payload, record_sid=OTHER, policy_sid=POLICY)
