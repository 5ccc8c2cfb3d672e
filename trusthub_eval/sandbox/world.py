"""The sandbox's world (account, policies, customer profiles, evaluations) and how it is judged."""

from __future__ import annotations

import copy
import datetime as dt
import hmac
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

JSON = dict[str, Any]

DEFAULT_WORLD_PATH: Final = Path(__file__).with_name("default_world.json")

PROFILE_STATUSES: Final = (
    "draft",
    "pending-review",
    "in-review",
    "twilio-rejected",
    "twilio-approved",
)
ITEM_KINDS: Final = ("end_users", "supporting_documents", "supporting_customer_profiles")

# Twilio's evaluation error codes, as used by the examples in twilio_trusthub_v1.json.
END_USER_MISSING: Final = 22214
END_USER_FIELD_MISSING: Final = 22215
DOCUMENT_MISSING: Final = 22216
DOCUMENT_FIELD_MISSING: Final = 22217
DOCUMENT_ADDRESS_MISSING: Final = 22219

# The spec's own wording is inconsistent (passed: "address sids", failed: "Address sid(s)",
# "Email Address" for email); mirroring it keeps sandbox payloads indistinguishable.
_FIELD_NAMES: Final = {
    "email": "Email Address",
    "address_sids": "Address sid(s)",
    "website_url": "Website URL",
    "bundle_sid": "Supporting Bundle Status",
}
_VALID_FIELD_NAMES: Final = {**_FIELD_NAMES, "address_sids": "address sids"}


def is_sid(value: object, prefix: str) -> bool:
    """Whether ``value`` is ``prefix`` followed by 32 hex digits (Twilio's SID shape)."""
    return isinstance(value, str) and re.fullmatch(prefix + r"[0-9a-fA-F]{32}", value) is not None


def new_sid(prefix: str) -> str:
    """A fresh random SID with ``prefix``."""
    return prefix + uuid.uuid4().hex


def format_date(value: dt.datetime) -> str:
    """Twilio's date format: ISO 8601, whole seconds, UTC, ``Z`` (``2020-04-28T18:14:01Z``)."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_date(value: str) -> dt.datetime:
    """Parse an ISO 8601 date from a world file; naive values are taken as UTC."""
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC).replace(microsecond=0)


def utcnow() -> dt.datetime:
    """The current time, truncated to whole seconds as Twilio reports it."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class WorldError(ValueError):
    """A world file or control request that does not describe a valid world."""


@dataclass
class Policy:
    """A TrustHub policy: a named set of requirements (free-form JSON, as in the spec)."""

    sid: str
    friendly_name: str
    requirements: JSON

    def to_resource(self, base_url: str) -> JSON:
        """The ``trusthub.v1.policies`` representation."""
        return {
            "sid": self.sid,
            "friendly_name": self.friendly_name,
            "requirements": copy.deepcopy(self.requirements),
            "url": f"{base_url}/v1/Policies/{self.sid}",
        }


@dataclass
class CustomerProfile:
    """A customer profile (``BU…``) with the items assigned to it."""

    sid: str
    friendly_name: str
    policy_sid: str
    status: str
    email: str | None
    status_callback: str | None
    valid_until: dt.datetime | None
    date_created: dt.datetime
    date_updated: dt.datetime
    errors: list[Any] | None
    end_users: list[JSON] = field(default_factory=list)
    supporting_documents: list[JSON] = field(default_factory=list)
    supporting_customer_profiles: list[JSON] = field(default_factory=list)

    def items(self) -> dict[str, list[JSON]]:
        """The assigned items, keyed as in the world file."""
        return {
            "end_users": self.end_users,
            "supporting_documents": self.supporting_documents,
            "supporting_customer_profiles": self.supporting_customer_profiles,
        }

    def to_resource(self, base_url: str, account_sid: str) -> JSON:
        """The ``trusthub.v1.customer_profile`` representation."""
        url = f"{base_url}/v1/CustomerProfiles/{self.sid}"
        channel_endpoints = f"{url}/ChannelEndpointAssignments"
        return {
            "sid": self.sid,
            "account_sid": account_sid,
            "policy_sid": self.policy_sid,
            "friendly_name": self.friendly_name,
            "status": self.status,
            "valid_until": format_date(self.valid_until) if self.valid_until else None,
            "email": self.email,
            "status_callback": self.status_callback,
            "date_created": format_date(self.date_created),
            "date_updated": format_date(self.date_updated),
            "url": url,
            "links": {
                "customer_profiles_entity_assignments": f"{url}/EntityAssignments",
                "customer_profiles_evaluations": f"{url}/Evaluations",
                "customer_profiles_channel_endpoint_assignment": channel_endpoints,
            },
            "errors": copy.deepcopy(self.errors),
        }


@dataclass
class Evaluation:
    """One evaluation of a customer profile against a policy, frozen when it was made."""

    sid: str
    customer_profile_sid: str
    policy_sid: str
    status: str
    date_created: dt.datetime
    results: list[JSON]
    # Creation order breaks ties between evaluations made within the same second.
    seq: int = 0

    def to_resource(self, base_url: str, account_sid: str) -> JSON:
        """The ``trusthub.v1.customer_profile.customer_profile_evaluation`` representation."""
        return {
            "sid": self.sid,
            "account_sid": account_sid,
            "policy_sid": self.policy_sid,
            "customer_profile_sid": self.customer_profile_sid,
            "status": self.status,
            "date_created": format_date(self.date_created),
            "url": (
                f"{base_url}/v1/CustomerProfiles/{self.customer_profile_sid}/Evaluations/{self.sid}"
            ),
            "results": copy.deepcopy(self.results),
        }


@dataclass
class World:
    """Everything the sandbox knows. Not thread-safe: :class:`SandboxServer` holds the lock."""

    account_sid: str
    auth_token: str
    api_keys: dict[str, str]
    policies: dict[str, Policy]
    profiles: dict[str, CustomerProfile]
    evaluations: list[Evaluation]
    concurrency_limit: int | None = None
    _seq: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> World:
        """Build a world from parsed world-file JSON, validating it."""
        if not isinstance(data, Mapping):
            raise WorldError("A world must be a JSON object.")
        account_sid = _sid(data.get("account_sid"), "AC", "account_sid")
        auth_token = data.get("auth_token")
        if not isinstance(auth_token, str) or not auth_token:
            raise WorldError("auth_token must be a non-empty string.")
        api_keys: dict[str, str] = {}
        for key in _list(data.get("api_keys", []), "api_keys"):
            sid = _sid(_obj(key, "api_keys[]").get("sid"), "SK", "api_keys[].sid")
            secret = key.get("secret")
            if not isinstance(secret, str) or not secret:
                raise WorldError(f"API key {sid} needs a non-empty secret.")
            api_keys[sid] = secret
        limit = data.get("concurrency_limit")
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 1
        ):
            raise WorldError("concurrency_limit must be a positive integer or null.")

        policies: dict[str, Policy] = {}
        for raw in _list(data.get("policies", []), "policies"):
            raw = _obj(raw, "policies[]")
            sid = _sid(raw.get("sid"), "RN", "policies[].sid")
            requirements = _obj(raw.get("requirements", {}), f"policy {sid} requirements")
            policies[sid] = Policy(sid, str(raw.get("friendly_name", "")), dict(requirements))

        world = cls(account_sid, auth_token, api_keys, policies, {}, [], limit)
        for raw in _list(data.get("customer_profiles", []), "customer_profiles"):
            profile = _profile(_obj(raw, "customer_profiles[]"), policies)
            if profile.sid in world.profiles:
                raise WorldError(f"Customer profile {profile.sid} appears twice.")
            world.profiles[profile.sid] = profile

        for raw in _list(data.get("evaluations", []), "evaluations"):
            world._load_evaluation(_obj(raw, "evaluations[]"))
        return world

    def _load_evaluation(self, raw: Mapping[str, Any]) -> None:
        sid = _sid(raw.get("sid"), "EL", "evaluations[].sid")
        profile = self.profiles.get(str(raw.get("customer_profile_sid")))
        if profile is None:
            raise WorldError(f"Evaluation {sid}: unknown customer_profile_sid.")
        policy_sid = raw.get("policy_sid", profile.policy_sid)
        date_created = parse_date(_str(raw.get("date_created"), f"evaluation {sid} date_created"))
        if "results" in raw:
            # Recorded verbatim, e.g. copied from a real TrustHub payload.
            results = [dict(r) for r in _list(raw["results"], f"evaluation {sid} results")]
        else:
            # History is computed like a live evaluation, from the profile's items as they were
            # then: any item list given on the evaluation overrides the profile's current one.
            policy = self.policies.get(str(policy_sid))
            if policy is None:
                raise WorldError(f"Evaluation {sid}: unknown policy_sid {policy_sid!r}.")
            items = profile.items()
            for kind in ITEM_KINDS:
                if kind in raw:
                    items[kind] = _items(raw[kind], kind)
            results = evaluate_requirements(policy.requirements, items)
        status = raw.get("status") or _status_of(results)
        if status not in ("compliant", "noncompliant"):
            raise WorldError(f"Evaluation {sid}: status must be compliant or noncompliant.")
        self._seq += 1
        self.evaluations.append(
            Evaluation(sid, profile.sid, str(policy_sid), status, date_created, results, self._seq)
        )

    def authenticates(self, username: str, password: str) -> bool:
        """Whether the basic-auth pair is the account's token or one of its API keys."""
        if username == self.account_sid:
            expected: str | None = self.auth_token
        else:
            expected = self.api_keys.get(username)
        # compare_digest even on a miss, so a wrong username costs the same as a wrong secret.
        return hmac.compare_digest(password.encode(), (expected or "\0").encode()) and (
            expected is not None
        )

    def evaluate(
        self, profile_sid: str, policy_sid: str, *, now: dt.datetime | None = None
    ) -> Evaluation:
        """Evaluate a profile's current items against a policy and record the evaluation."""
        profile = self.profiles[profile_sid]
        policy = self.policies[policy_sid]
        results = evaluate_requirements(policy.requirements, profile.items())
        self._seq += 1
        evaluation = Evaluation(
            new_sid("EL"),
            profile_sid,
            policy_sid,
            _status_of(results),
            now or utcnow(),
            results,
            self._seq,
        )
        self.evaluations.append(evaluation)
        return evaluation

    def evaluations_of(self, profile_sid: str) -> list[Evaluation]:
        """A profile's evaluations, newest first."""
        found = [e for e in self.evaluations if e.customer_profile_sid == profile_sid]
        return sorted(found, key=lambda e: (e.date_created, e.seq), reverse=True)

    def set_assigned_items(
        self,
        profile_sid: str,
        changes: Mapping[str, Any],
        *,
        merge: bool = False,
        now: dt.datetime | None = None,
    ) -> CustomerProfile:
        """Change a profile's items and/or status; see ``SandboxServer.set_assigned_items``."""
        profile = self.profiles.get(profile_sid)
        if profile is None:
            raise KeyError(profile_sid)
        unknown = set(changes) - {*ITEM_KINDS, "status", "errors", "friendly_name", "valid_until"}
        if unknown:
            raise WorldError(f"Unknown keys: {', '.join(sorted(unknown))}.")
        # Validate everything before touching the profile so a bad request changes nothing.
        new_items = {kind: _items(changes[kind], kind) for kind in ITEM_KINDS if kind in changes}
        status = changes.get("status", profile.status)
        if status not in PROFILE_STATUSES:
            raise WorldError(f"status must be one of {', '.join(PROFILE_STATUSES)}.")
        errors = changes.get("errors", profile.errors)
        if errors is not None and not isinstance(errors, list):
            raise WorldError("errors must be a list or null.")
        valid_until = profile.valid_until
        if "valid_until" in changes:
            raw_until = changes["valid_until"]
            valid_until = None if raw_until is None else parse_date(_str(raw_until, "valid_until"))

        for kind, items in new_items.items():
            current: list[JSON] = getattr(profile, kind)
            setattr(profile, kind, _merge_items(current, items) if merge else items)
        profile.status = status
        profile.errors = errors
        profile.valid_until = valid_until
        if "friendly_name" in changes:
            profile.friendly_name = _str(changes["friendly_name"], "friendly_name")
        profile.date_updated = now or utcnow()
        return profile


def load_world(path: str | Path | None = None) -> World:
    """Read and validate a world file (the packaged default world when ``path`` is None)."""
    world_path = Path(path) if path is not None else DEFAULT_WORLD_PATH
    try:
        text = world_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorldError(f"Cannot read world file {world_path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorldError(f"World file {world_path} is not valid JSON: {exc}") from exc
    try:
        return World.from_dict(data)
    except WorldError as exc:
        raise WorldError(f"World file {world_path}: {exc}") from exc


# --- evaluation logic -------------------------------------------------------------------------


def evaluate_requirements(
    requirements: Mapping[str, Any], items: Mapping[str, Sequence[JSON]]
) -> list[JSON]:
    """Walk a policy's requirements over a profile's assigned items; one result per requirement."""
    results: list[JSON] = []
    for requirement in requirements.get("end_user") or []:
        results.append(_end_user_result(requirement, items.get("end_users", [])))
    for group in requirements.get("supporting_document") or []:
        # Each inner list holds alternatives: the group is met by any one of them.
        alternatives = group if isinstance(group, list) else [group]
        candidates = [
            _document_result(r, items.get("supporting_documents", [])) for r in alternatives
        ]
        if candidates:
            results.append(next((c for c in candidates if c["passed"]), candidates[0]))
    for requirement in requirements.get("supporting_customer_profiles") or []:
        results.append(
            _supporting_profile_result(requirement, items.get("supporting_customer_profiles", []))
        )
    return results


def _status_of(results: Iterable[Mapping[str, Any]]) -> str:
    return "compliant" if all(r.get("passed") for r in results) else "noncompliant"


def _end_user_result(requirement: Mapping[str, Any], end_users: Sequence[JSON]) -> JSON:
    name = str(requirement.get("name", requirement.get("type", "")))
    fields = [str(f) for f in requirement.get("fields", [])]
    result = _result_base(requirement, name, str(requirement.get("type", "")))
    matches = [u for u in end_users if u.get("type") == requirement.get("type")]
    if not matches:
        # Wording and codes from the spec's "create" evaluation example.
        result.update(
            passed=False,
            failure_reason=f"{_a(name)} {name} End-User is missing. "
            "Please add one to the regulatory bundle.",
            error_code=END_USER_MISSING,
            valid=[],
            invalid=[_end_user_invalid(f, name) for f in fields],
        )
        return result
    best = min(matches, key=lambda u: len(_missing(u, fields)))
    missing = _missing(best, fields)
    result["valid"] = [_valid(f) for f in fields if f not in missing]
    result["invalid"] = [_end_user_invalid(f, name) for f in missing]
    if missing:
        # The spec has no example of a present-but-incomplete end user; the result carries
        # the per-field code, as a failed result always names the first thing to fix.
        result.update(
            passed=False,
            failure_reason=f"The {name} End-User is missing required information. "
            "Please complete the fields listed as invalid.",
            error_code=END_USER_FIELD_MISSING,
        )
    return result


def _document_result(requirement: Mapping[str, Any], documents: Sequence[JSON]) -> JSON:
    accepted = [d for d in requirement.get("accepted_documents", []) if isinstance(d, Mapping)]
    by_type = {str(d.get("type")): d for d in accepted}
    matches = [d for d in documents if d.get("type") in by_type]
    if not matches:
        first = accepted[0] if accepted else {}
        doc_name = str(first.get("name", requirement.get("name", "")))
        result = _result_base(requirement, doc_name, str(first.get("type", "")), key="name")
        result.update(
            passed=False,
            failure_reason=f"{_a(doc_name)} {doc_name} is missing. "
            "Please add one to the regulatory bundle.",
            error_code=DOCUMENT_MISSING,
            valid=[],
            invalid=[_document_invalid(str(f), doc_name) for f in first.get("fields", [])],
        )
        return result

    def missing_of(doc: JSON) -> list[str]:
        return _missing(doc, [str(f) for f in by_type[str(doc["type"])].get("fields", [])])

    best = min(matches, key=lambda d: len(missing_of(d)))
    spec = by_type[str(best["type"])]
    doc_name = str(spec.get("name", best["type"]))
    fields = [str(f) for f in spec.get("fields", [])]
    missing = missing_of(best)
    result = _result_base(requirement, doc_name, str(best["type"]), key="name")
    result["valid"] = [_valid(f) for f in fields if f not in missing]
    result["invalid"] = [_document_invalid(f, doc_name) for f in missing]
    if missing:
        result.update(
            passed=False,
            failure_reason=f"The {doc_name} is missing required information. "
            "Please complete the fields listed as invalid.",
            error_code=result["invalid"][0]["error_code"],
        )
    return result


def _supporting_profile_result(requirement: Mapping[str, Any], profiles: Sequence[JSON]) -> JSON:
    object_type = str(requirement.get("type", ""))
    name = str(requirement.get("name", object_type))
    result = _result_base(requirement, name, object_type)
    if any(p.get("type") == object_type for p in profiles):
        result["valid"] = [_valid("bundle_sid")]
        return result
    # The spec shows no failed supporting-profile result; it reports a missing supporting
    # item with 22216 and, like its Power of Attorney example, nothing field-level to fix.
    result.update(
        passed=False,
        failure_reason=f"{_a(name)} {name} is missing. Please add one to the regulatory bundle.",
        error_code=DOCUMENT_MISSING,
        valid=[],
    )
    return result


def _result_base(
    requirement: Mapping[str, Any], friendly_name: str, object_type: str, *, key: str = ""
) -> JSON:
    requirement_name = str(requirement.get("requirement_name", ""))
    # The spec's examples title-case requirement_name ("Starter Customer Profile Information")
    # except for documents, whose requirement carries its own name ("Customer Profile Address").
    requirement_friendly_name = (
        str(requirement[key]) if key and key in requirement else _title(requirement_name)
    )
    return {
        "friendly_name": friendly_name,
        "object_type": object_type,
        "passed": True,
        "failure_reason": None,
        "error_code": None,
        "valid": [],
        "invalid": [],
        "requirement_friendly_name": requirement_friendly_name,
        "requirement_name": requirement_name,
    }


def _valid(object_field: str) -> JSON:
    return {
        "object_field": object_field,
        "error_code": None,
        "friendly_name": _VALID_FIELD_NAMES.get(object_field, _title(object_field)),
        "passed": True,
        "failure_reason": None,
    }


def _end_user_invalid(object_field: str, end_user_name: str) -> JSON:
    label = _field_name(object_field)
    return {
        "friendly_name": label,
        "object_field": object_field,
        "failure_reason": f"The {label} is missing. "
        # The spec says "on the Business information" for an end user named "Business".
        f"Please enter in {_a(label).lower()} {label} on the "
        f"{end_user_name.removesuffix(' Information')} information.",
        "error_code": END_USER_FIELD_MISSING,
    }


def _document_invalid(object_field: str, doc_name: str) -> JSON:
    label = _field_name(object_field)
    if object_field == "address_sids":
        reason = f"The Address is missing. Please enter in the address shown on the {doc_name}."
        code = DOCUMENT_ADDRESS_MISSING
    else:
        reason = f"The {label} is missing. Please enter in the {label} shown on the {doc_name}."
        code = DOCUMENT_FIELD_MISSING
    return {
        "friendly_name": label,
        "object_field": object_field,
        "failure_reason": reason,
        "error_code": code,
    }


def _missing(item: Mapping[str, Any], fields: Iterable[str]) -> list[str]:
    attributes = item.get("attributes") or {}
    return [f for f in fields if attributes.get(f) in (None, "", [], {})]


def _field_name(object_field: str) -> str:
    return _FIELD_NAMES.get(object_field, _title(object_field))


def _title(snake: str) -> str:
    return " ".join(word.capitalize() for word in snake.split("_"))


def _a(noun: str) -> str:
    return "An" if noun[:1].lower() in "aeiou" else "A"


def _merge_items(current: list[JSON], changes: list[JSON]) -> list[JSON]:
    """Patch items by type: attributes are updated key by key, unseen types are appended."""
    merged = copy.deepcopy(current)
    for change in changes:
        target = next((m for m in merged if m.get("type") == change["type"]), None)
        if target is None:
            merged.append(copy.deepcopy(change))
            continue
        attributes = {**(target.get("attributes") or {}), **(change.get("attributes") or {})}
        target.update({k: copy.deepcopy(v) for k, v in change.items() if k != "attributes"})
        target["attributes"] = attributes
    return merged


# --- world-file validation helpers -----------------------------------------------------------


def _profile(raw: Mapping[str, Any], policies: Mapping[str, Policy]) -> CustomerProfile:
    sid = _sid(raw.get("sid"), "BU", "customer_profiles[].sid")
    policy_sid = _sid(raw.get("policy_sid"), "RN", f"profile {sid} policy_sid")
    if policy_sid not in policies:
        raise WorldError(f"Customer profile {sid}: unknown policy_sid {policy_sid}.")
    status = raw.get("status", "draft")
    if status not in PROFILE_STATUSES:
        raise WorldError(
            f"Customer profile {sid}: status must be one of {', '.join(PROFILE_STATUSES)}."
        )
    date_created = parse_date(_str(raw.get("date_created"), f"profile {sid} date_created"))
    date_updated = raw.get("date_updated")
    valid_until = raw.get("valid_until")
    errors = raw.get("errors")
    if errors is not None and not isinstance(errors, list):
        raise WorldError(f"Customer profile {sid}: errors must be a list or null.")
    return CustomerProfile(
        sid=sid,
        friendly_name=_str(raw.get("friendly_name"), f"profile {sid} friendly_name"),
        policy_sid=policy_sid,
        status=status,
        email=raw.get("email"),
        status_callback=raw.get("status_callback"),
        valid_until=parse_date(valid_until) if valid_until else None,
        date_created=date_created,
        date_updated=parse_date(date_updated) if date_updated else date_created,
        errors=copy.deepcopy(errors),
        **{kind: _items(raw.get(kind, []), f"profile {sid} {kind}") for kind in ITEM_KINDS},
    )


def _items(value: object, where: str) -> list[JSON]:
    items: list[JSON] = []
    for item in _list(value, where):
        item = _obj(item, f"{where}[]")
        if not isinstance(item.get("type"), str) or not item["type"]:
            raise WorldError(f"Every item in {where} needs a 'type'.")
        attributes = item.get("attributes", {})
        if not isinstance(attributes, Mapping):
            raise WorldError(f"'attributes' in {where} must be an object.")
        items.append(copy.deepcopy(dict(item)))
    return items


def _sid(value: object, prefix: str, where: str) -> str:
    if not is_sid(value, prefix):
        raise WorldError(f"{where} must be '{prefix}' followed by 32 hex digits, got {value!r}.")
    assert isinstance(value, str)
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise WorldError(f"{where} must be a string.")
    return value


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise WorldError(f"{where} must be a list.")
    return value


def _obj(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise WorldError(f"{where} must be an object.")
    return value
