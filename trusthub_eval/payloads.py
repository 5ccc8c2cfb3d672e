"""Checks of TrustHub's evaluation answers against Twilio's schema, before anything is stored.

An answer that fails a check raises :class:`~trusthub_eval.exceptions.InvalidResponse`: it never
becomes a completed evaluation. The schema is Twilio's ``customer_profile_evaluation`` and
``trust_product_evaluation`` (``twilio_trusthub_v1.json``), the same but for the field that names
the record; the result items follow the spec's examples.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from trusthub_eval.exceptions import ErrorKind, InvalidResponse
from trusthub_eval.kinds import RecordKind
from trusthub_eval.sids import SidKind, is_sid

STATUSES = frozenset({"compliant", "noncompliant"})
#: The length of the requirement rows' character columns.
MAX_NAME_LENGTH = 255
#: Requirement positions are a small integer column.
MAX_RESULTS = 32_767
_INT32 = range(-(2**31), 2**31)
_RESULT_NAMES = ("requirement_name", "requirement_friendly_name", "friendly_name", "object_type")
#: The years (in UTC) of a date TrustHub can mean. PostgreSQL stores years 4713 BC to 294276,
#: MariaDB 1000 to 9999, but Python reads back 1 to 9999 only, and a page shows a date in local
#: time, up to 14 hours away: even a 0001-01-01 or 9999-12-31 stored in UTC can fail there.
#: No TrustHub record predates the Unix epoch, and 9000 leaves room for arithmetic on a
#: far-off ``valid_until``.
DATE_RANGE = range(1970, 9001)
#: How deeply an answer may nest. TrustHub's deepest documented value (an invalid field of a
#: result of an evaluation) is five levels down. MariaDB refuses JSON nested deeper than 31
#: levels, and Python's JSON and template code recurse: a page that reads a value nested a
#: thousand levels deep fails.
MAX_DEPTH = 24
#: The most JSON text (in characters) of one answer or record that is stored.
MAX_STORED_CHARS = 1_000_000


def parse_twilio_datetime(value: object) -> datetime.datetime | None:
    """TrustHub's ISO 8601 timestamps (``2020-04-28T18:14:01Z``), or None.

    None too for an impossible date (month 13) or one outside :data:`DATE_RANGE` in UTC.
    """
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:  # well-formed but impossible, e.g. month 13
        return None
    if parsed is None:
        return None
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, datetime.UTC)
    try:
        in_utc = parsed.astimezone(datetime.UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is in year 0
        return None
    return parsed if in_utc.year in DATE_RANGE else None


def check_evaluation(
    payload: object,
    *,
    record_sid: str,
    policy_sid: str | None,
    record_kind: RecordKind = RecordKind.CUSTOMER_PROFILE,
    kind: ErrorKind = ErrorKind.AMBIGUOUS,
) -> Mapping[str, Any]:
    """Return ``payload`` if it is a storable evaluation of ``record_sid``, a record of
    ``record_kind``, against that policy (any policy if ``policy_sid`` is None).

    Raises :class:`InvalidResponse` of ``kind`` naming the first problem found.
    """

    def invalid(problem: str) -> InvalidResponse:
        return InvalidResponse(
            f"TrustHub's evaluation is unusable: {problem}.",
            kind=kind,
            body=_json_text(payload),
        )

    if not isinstance(payload, Mapping):
        raise invalid("not a JSON object")
    problem = unstorable_problem(payload)
    if problem:
        raise invalid(problem)
    if not is_sid(payload.get("sid"), SidKind.EVALUATION):
        raise invalid("'sid' is not an Evaluation SID (EL…)")
    account = payload.get("account_sid")
    if account is not None and not is_sid(account, SidKind.ACCOUNT):
        raise invalid("'account_sid' is not an Account SID (AC…)")
    if payload.get(record_kind.sid_field) != record_sid:
        raise invalid(f"it is not an evaluation of {record_sid}")
    if policy_sid is None and not is_sid(payload.get("policy_sid"), SidKind.POLICY):
        raise invalid("'policy_sid' is not a Policy SID (RN…)")
    if policy_sid is not None and payload.get("policy_sid") != policy_sid:
        raise invalid(f"it is not an evaluation against {policy_sid}")
    if payload.get("status") not in STATUSES:
        raise invalid("'status' is neither 'compliant' nor 'noncompliant'")
    created = payload.get("date_created")
    if created is not None and parse_twilio_datetime(created) is None:
        raise invalid(
            f"'date_created' is not an ISO 8601 date-time of the years "
            f"{DATE_RANGE.start}-{DATE_RANGE.stop - 1}"
        )
    results = payload.get("results")
    if not isinstance(results, list):
        raise invalid("'results' is not a list")
    if len(results) > MAX_RESULTS:
        raise invalid(f"more than {MAX_RESULTS} results")
    for position, item in enumerate(results):
        problem = _result_problem(item)
        if problem:
            raise invalid(f"result {position}: {problem}")
    return payload


def identify_evaluation(
    item: object,
    *,
    record_sid: str,
    record_kind: RecordKind = RecordKind.CUSTOMER_PROFILE,
    kind: ErrorKind = ErrorKind.RETRYABLE,
) -> tuple[str, str, datetime.datetime]:
    """``(sid, policy_sid, date_created)`` of an item of the evaluation list of ``record_sid``, a
    record of ``record_kind``.

    Reconciliation decides from these whether TrustHub created an evaluation for a POST, so an
    item without them makes the whole listing unusable (InvalidResponse of ``kind``): reading
    past it could conclude "none" and post twice.
    """
    problem = None
    if not isinstance(item, Mapping):
        problem = "a listed item is not a JSON object"
    elif not is_sid(item.get("sid"), SidKind.EVALUATION):
        problem = "a listed evaluation has no Evaluation SID"
    elif item.get(record_kind.sid_field) != record_sid:
        problem = f"a listed evaluation is not one of {record_sid}"
    elif not is_sid(item.get("policy_sid"), SidKind.POLICY):
        problem = "a listed evaluation has no Policy SID"
    elif parse_twilio_datetime(item.get("date_created")) is None:
        problem = "a listed evaluation has no date_created"
    if problem is not None:
        raise InvalidResponse(
            f"TrustHub's list of evaluations is unusable: {problem}.",
            kind=kind,
            body=_json_text(item),
        )
    assert isinstance(item, Mapping)
    created = parse_twilio_datetime(item["date_created"])
    assert created is not None
    return item["sid"], item["policy_sid"], created


#: A profile's ``status`` as TrustHub documents it (``draft``, ``twilio-approved``, …); one it
#: adds later is stored as it comes if it has this shape and fits the column.
_STATUS_SHAPE = re.compile(r"\A[a-z][a-z0-9-]{0,31}\Z")


def check_policy(payload: object, *, sid: str | None = None) -> Mapping[str, Any]:
    """Return ``payload`` if it is a storable policy record (of ``sid`` if given); raise
    :class:`InvalidResponse` (permanent) naming the first problem otherwise."""
    problem = _record_problem(payload, SidKind.POLICY, sid, texts=("friendly_name",), sids={})
    return _checked_record(payload, SidKind.POLICY, problem)


def check_record(
    payload: object,
    *,
    record_kind: RecordKind = RecordKind.CUSTOMER_PROFILE,
    sid: str | None = None,
) -> Mapping[str, Any]:
    """Return ``payload`` if it is a storable record of a Customer Profile or Trust Product
    (``record_kind``; of ``sid`` if given); raise :class:`InvalidResponse` (permanent) naming
    the first problem otherwise.

    Its dates are not checked here: one that is no real instant is stored as unknown.
    """
    label = record_kind.sid_label
    problem = _record_problem(
        payload,
        SidKind.CUSTOMER_PROFILE,  # both kinds are BU…
        sid,
        texts=("friendly_name", "email"),
        sids={"policy_sid": SidKind.POLICY, "account_sid": SidKind.ACCOUNT},
        label=label,
    )
    if problem is None:
        assert isinstance(payload, Mapping)
        status = payload.get("status")
        if status is not None and not (isinstance(status, str) and _STATUS_SHAPE.match(status)):
            problem = "'status' is not a TrustHub status"
    return _checked_record(payload, SidKind.CUSTOMER_PROFILE, problem, label=label)


def _record_problem(
    payload: object,
    kind: SidKind,
    sid: str | None,
    *,
    texts: tuple[str, ...],
    sids: Mapping[str, SidKind],
    label: str | None = None,
) -> str | None:
    if not isinstance(payload, Mapping):
        return "not a JSON object"
    problem = unstorable_problem(payload)
    if problem is not None:
        return problem
    if not is_sid(payload.get("sid"), kind):
        return f"'sid' is not a valid {label or kind.label} ({kind.value}…)"
    if sid is not None and payload["sid"] != sid:
        return f"it is the record of {payload['sid']}, not of {sid}"
    problem = _names_problem(payload, texts)
    if problem is not None:
        return problem
    for name, sid_kind in sids.items():
        value = payload.get(name)
        if value is not None and not is_sid(value, sid_kind):
            return f"{name!r} is not a valid {sid_kind.label} ({sid_kind.value}…)"
    return None


def _checked_record(
    payload: object, kind: SidKind, problem: str | None, *, label: str | None = None
) -> Mapping[str, Any]:
    if problem is None:
        assert isinstance(payload, Mapping)
        return payload
    sid = payload.get("sid") if isinstance(payload, Mapping) else None
    named = f" {sid}" if is_sid(sid, kind) else ""
    what = (label or kind.label).removesuffix(" SID").lower()
    raise InvalidResponse(
        f"TrustHub's record of a {what}{named} is unusable: {problem}.",
        kind=ErrorKind.PERMANENT,
        body=_json_text(payload),
    )


def _names_problem(record: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    """A problem with ``names`` of ``record``, each stored in a name column if present."""
    for name in names:
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            return f"{name!r} is not a string"
        if isinstance(value, str) and len(value) > MAX_NAME_LENGTH:
            return f"{name!r} is longer than {MAX_NAME_LENGTH} characters"
    return None


def _result_problem(item: object) -> str | None:
    if not isinstance(item, Mapping):
        return "not an object"
    if not isinstance(item.get("passed"), bool):
        return "'passed' is not true or false"
    problem = _names_problem(item, _RESULT_NAMES)
    if problem is not None:
        return problem
    if not isinstance(item.get("requirement_name"), str) or not item["requirement_name"]:
        return "'requirement_name' is missing"
    reason = item.get("failure_reason")
    if reason is not None and not isinstance(reason, str):
        return "'failure_reason' is not a string"
    code = item.get("error_code")
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
        return "'error_code' is not an integer"
    if isinstance(code, int) and code not in _INT32:
        return "'error_code' is out of range"
    for name in ("valid", "invalid"):
        value = item.get(name)
        if value is not None and not isinstance(value, list):
            return f"{name!r} is not a list"
    for position, field in enumerate(item.get("invalid") or ()):
        problem = _invalid_field_problem(field)
        if problem:
            return f"invalid field {position}: {problem}"
    return None


# What Twilio documents of an item of a result's ``invalid`` list (all optional).
_INVALID_FIELD_TEXTS = ("friendly_name", "object_field", "failure_reason")


def _invalid_field_problem(field: object) -> str | None:
    if not isinstance(field, Mapping):
        return "not an object"
    for name in _INVALID_FIELD_TEXTS:
        value = field.get(name)
        if value is not None and not isinstance(value, str):
            return f"{name!r} is not a string"
    code = field.get("error_code")
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
        return "'error_code' is not an integer"
    return None


def unstorable_problem(payload: object) -> str | None:
    """A problem that keeps ``payload`` from being stored and read back by every page.

    A string (or key) a database cannot store, a number JSON cannot carry (NaN, infinities:
    PostgreSQL's ``jsonb`` refuses them), nesting deeper than :data:`MAX_DEPTH`, or more than
    :data:`MAX_STORED_CHARS` of JSON text.
    """
    # One pass in C for the usual answer, which has none of these: JSON text escapes every NUL
    # as \u0000, keeps an unpaired surrogate (which UTF-8 cannot encode) and, with allow_nan
    # off, refuses NaN. The walk below, which names the problem, is for the rest (and for text
    # that merely quotes "\u0000").
    try:
        text = json.dumps(payload, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
    except (TypeError, ValueError, RecursionError):
        pass
    else:
        if len(text) > MAX_STORED_CHARS:
            return f"it is larger than {MAX_STORED_CHARS:,} characters of JSON"
        if "\\u0000" not in text and _depth(payload) <= MAX_DEPTH:
            return None
    pending: list[tuple[object, int]] = [(payload, 0)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, Mapping | list):
            if depth >= MAX_DEPTH:
                return f"it is nested more than {MAX_DEPTH} levels deep"
            items = [*value.keys(), *value.values()] if isinstance(value, Mapping) else value
            pending.extend((item, depth + 1) for item in items)
        elif isinstance(value, str):
            if "\x00" in value:
                return "it contains a NUL character"
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "it contains an unpaired surrogate"
        elif isinstance(value, float) and not math.isfinite(value):
            return "it contains a number that is not finite (NaN or Infinity)"
    return None


def _depth(payload: object) -> int:
    """How many levels of objects and arrays ``payload`` nests (a scalar: 0)."""
    deepest = 0
    pending: list[tuple[object, int]] = [(payload, 0)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, Mapping):
            deepest = max(deepest, depth + 1)
            pending.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            deepest = max(deepest, depth + 1)
            pending.extend((item, depth + 1) for item in value)
    return deepest


def _json_text(payload: object) -> str:
    """``payload`` as text for an error's record (never raising)."""
    try:
        return json.dumps(payload, ensure_ascii=True, default=str)
    except (TypeError, ValueError, RecursionError):
        return "(not shown: it cannot be written as JSON)"
