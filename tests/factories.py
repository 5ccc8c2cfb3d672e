"""Small helpers that build the app's rows for tests."""

from __future__ import annotations

import datetime
import secrets
import time

from django.db.models import F
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from trusthub_eval import queue, sync
from trusthub_eval.exceptions import RetryLater
from trusthub_eval.models import CustomerProfile, Evaluation, Policy, TrustProduct

ACME = "BUfd0c753db72f0d7f08d8ff54199fda78"  # compliant
INITECH = "BU0c94a6739989d2d0335a3cf9fc125bde"  # no business information
UMBRELLA = "BU64dc6bf5810565dc16eaf5c3a772768c"  # incomplete business information
STARK = "BUf42cba1f25e07bafecf3ee9658264fe7"  # no address document
HOOLI = "BU4e61d8e55f52a2c61f9636063688d5e5"  # starter profile, compliant
PRIMARY_POLICY = "RNdfbf3fae0e1107f8aded0e7cead80bf5"
STARTER_POLICY = "RN806dd6cd175f314e1f96a9727ee271f4"
#: The permissions to read everything the app shows (the `reader` fixture has them).
VIEW_ALL = ("view_customerprofile", "view_policy", "view_evaluation")


def grant(user, *codenames: str):
    """``user`` with the app's permissions ``codenames`` (each must exist)."""
    from django.contrib.auth.models import Permission

    perms = Permission.objects.filter(
        content_type__app_label="trusthub_eval", codename__in=codenames
    )
    assert perms.count() == len(codenames)
    user.user_permissions.add(*perms)
    return user


def sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def sync_world() -> dict[str, CustomerProfile]:
    """Import the sandbox's policies and profiles; the profiles by SID."""
    sync.sync_policies()
    sync.sync_customer_profiles()
    return {profile.sid: profile for profile in CustomerProfile.objects.select_related("policy")}


def make_profile(policy: Policy | None = None, **fields: object) -> CustomerProfile:
    """A profile that exists only locally (TrustHub does not know its SID)."""
    policy = policy or Policy.objects.for_sid(PRIMARY_POLICY)
    fields.setdefault("friendly_name", "Local only")
    return CustomerProfile.objects.create(sid=sid("BU"), policy=policy, **fields)


def bulk_evaluations(
    record: CustomerProfile | TrustProduct,
    times,
    *,
    took: datetime.timedelta | None = None,
    **fields: object,
) -> list[Evaluation]:
    """Evaluations of ``record`` (a profile or a trust product) against its policy, requested
    at each of ``times`` (and answered ``took`` later); completed and compliant unless
    ``fields`` say otherwise. One INSERT."""
    values = {"trigger": "schedule", "state": "completed", "status": "compliant", **fields}
    return Evaluation.objects.bulk_create(
        Evaluation(
            **{record.kind.field: record},
            policy=record.policy,
            requested_at=when,
            completed_at=when + took if took is not None else None,
            **values,
        )
        for when in times
    )


def posts(sandbox, profile_sid: str) -> int:
    path = f"/v1/CustomerProfiles/{profile_sid}/Evaluations"
    return sum(1 for r in sandbox.requests_log if r["method"] == "POST" and r["path"] == path)


def wait_idle(sandbox, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while sandbox.stats["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)


def age_claim(evaluation: Evaluation, seconds: float) -> None:
    """Make the row's claim (and its posting mark) ``seconds`` older, as if its worker had
    claimed it that long ago by the database's clock."""
    delta = datetime.timedelta(seconds=seconds)
    Evaluation.objects.filter(pk=evaluation.pk).update(
        started_at=F("started_at") - delta, posted_at=F("posted_at") - delta
    )


def run_until_done(evaluation: Evaluation) -> Evaluation:
    """Run attempts in-process, as the task's retries would, until the row is finished."""
    for _ in range(20):
        try:
            queue.run_evaluation(evaluation.pk)
        except RetryLater:
            continue
        break
    evaluation.refresh_from_db()
    return evaluation


def client_for(user) -> APIClient:
    """A client authenticated as the API's consumers are: with a token."""
    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client
