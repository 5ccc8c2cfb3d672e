"""QuerySets that hold the app's persistence logic: upserts, claims, recorded outcomes."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from django.db import IntegrityError, connection, models, transaction
from django.db.models import Count, F, Min, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from trusthub_eval import statements
from trusthub_eval.clock import DatabaseNow, ago, database_now, later
from trusthub_eval.payloads import parse_twilio_datetime

if TYPE_CHECKING:
    from trusthub_eval.models import (
        CustomerProfile,
        Evaluation,
        Policy,
        RequirementResult,
    )


def _text(value: object) -> str:
    return "" if value is None else str(value)


class PolicyQuerySet(models.QuerySet["Policy"]):
    def upsert_from_payload(self, payload: Mapping[str, Any]) -> Policy:
        """Create or update the policy TrustHub describes in ``payload``."""
        policy, _ = self.update_or_create(
            sid=payload["sid"],
            defaults={
                "friendly_name": _text(payload.get("friendly_name")),
                "requirements": payload.get("requirements"),
                "raw": dict(payload),
                "synced_at": timezone.now(),
            },
        )
        return policy

    def for_sid(self, sid: str) -> Policy:
        """The policy with ``sid``, creating a placeholder until it is synced."""
        policy, _ = self.get_or_create(sid=sid)
        return policy


class CustomerProfileQuerySet(models.QuerySet["CustomerProfile"]):
    def upsert_from_payload(self, payload: Mapping[str, Any]) -> CustomerProfile:
        """Create or update the customer profile TrustHub describes in ``payload``.

        A date that is no real instant (see :func:`parse_twilio_datetime`) is stored as unknown,
        None: the dates only inform, while skipping the profile would leave it unevaluated. The
        text TrustHub sent stays in ``raw``.
        """
        from trusthub_eval.models import Policy

        policy_sid = payload.get("policy_sid")
        with transaction.atomic():
            policy = Policy.objects.for_sid(policy_sid) if policy_sid else None
            profile, _ = self.update_or_create(
                sid=payload["sid"],
                defaults={
                    "account_sid": _text(payload.get("account_sid")),
                    "friendly_name": _text(payload.get("friendly_name")),
                    "email": _text(payload.get("email")),
                    "status": _text(payload.get("status")),
                    "policy": policy,
                    "valid_until": parse_twilio_datetime(payload.get("valid_until")),
                    "date_created": parse_twilio_datetime(payload.get("date_created")),
                    "date_updated": parse_twilio_datetime(payload.get("date_updated")),
                    "raw": dict(payload),
                    "synced_at": timezone.now(),
                },
            )
        return profile

    def lock_for_queueing(self) -> None:
        """Take these profiles' row locks, in key order, before queueing evaluations of them.

        Needed on MySQL and MariaDB only. There, inserting an evaluation takes a shared lock on
        its profile (the foreign key check) and pointing the profile at the new evaluation then
        needs an exclusive one: two concurrent requests for one profile deadlock. Waiting for
        the first request's lock instead, the second meets its evaluation in the in-flight
        constraint. PostgreSQL's foreign key lock does not conflict with that update, and SQLite
        writes one transaction at a time. Call inside the transaction that queues.
        """
        if connection.vendor == "mysql":
            list(self.order_by("pk").select_for_update().values_list("pk", flat=True))

    def with_latest_evaluation(self) -> CustomerProfileQuerySet:
        """Profiles with their latest evaluation and policy joined in, for lists."""
        return self.select_related("policy", "latest_evaluation")

    def refresh_latest(self) -> int:
        """Point each profile at its most recently requested evaluation; one UPDATE."""
        from trusthub_eval.models import Evaluation

        newest = Evaluation.objects.filter(customer_profile=OuterRef("pk")).order_by(
            "-requested_at", "-id"
        )
        return self.update(latest_evaluation=Subquery(newest.values("id")[:1]))

    def refresh_compliance(self) -> int:
        """Set each profile's compliance from its newest completed evaluation; one UPDATE."""
        from trusthub_eval.models import Evaluation

        newest = Evaluation.objects.filter(
            customer_profile=OuterRef("pk"), state=Evaluation.State.COMPLETED
        ).order_by("-completed_at", "-id")
        return self.update(
            compliance_status=Coalesce(Subquery(newest.values("status")[:1]), Value("")),
            compliance_checked_at=Subquery(newest.values("completed_at")[:1]),
            failing_requirements=Coalesce(
                # django-stubs cannot see the annotation through the custom queryset method.
                Subquery(newest.with_failing_count().values("failing_count")[:1]),  # type: ignore[misc]
                Value(0),
            ),
        )

    def record_compliance(self, evaluation: Evaluation, *, failing: int) -> Recorded:
        """Make a just completed ``evaluation`` its profile's compliance, unless the profile
        shows a newer one; ``failing`` is its number of failed requirements.

        What :meth:`refresh_compliance` would compute for that one profile, from the values at
        hand: the profile's ``compliance_checked_at`` is the completion time of the evaluation it
        shows. Call inside the transaction that completed it: the profile's row is locked
        first, so the compliance read before the change is exact and a concurrent completion
        is ordered by its time, whichever commits last. Two queries.
        """
        profiles = self.filter(pk=evaluation.customer_profile_id)
        previous = profiles.select_for_update().values_list("compliance_status", flat=True).get()
        assert evaluation.completed_at is not None
        not_newer = Q(compliance_checked_at__isnull=True) | Q(
            compliance_checked_at__lte=evaluation.completed_at
        )
        changed = profiles.filter(not_newer).update(
            compliance_status=evaluation.status or "",
            compliance_checked_at=evaluation.completed_at,
            failing_requirements=failing,
        )
        return Recorded(previous=previous, applied=bool(changed))


class EvaluationQuerySet(models.QuerySet["Evaluation"]):
    def active(self) -> EvaluationQuerySet:
        """Evaluations queued or running."""
        return self.filter(state__in=self.model.ACTIVE_STATES)

    def queue_many(
        self, pairs: Mapping[int, int], *, trigger: str, requested_by_id: int | None
    ) -> list[int]:
        """Queue an evaluation per (profile id -> policy id) not already in flight.

        Returns the new evaluations' ids and points each profile at its new one. Call inside a
        transaction. A concurrent request can never make it fail or queue a duplicate: on
        PostgreSQL the unique constraint on in-flight evaluations skips the busy pairs, in one
        statement whatever the number of profiles; elsewhere the pairs in flight are read under
        the profiles' locks first, and a few statements insert the rest (no ``INSERT IGNORE``,
        which would also make any other error a warning).
        """
        if not pairs:
            return []
        now = timezone.now()
        if connection.vendor == "postgresql":
            return self._queue_many_postgresql(pairs, now, trigger, requested_by_id)
        from trusthub_eval.models import CustomerProfile

        profile_ids = list(pairs)
        CustomerProfile.objects.filter(pk__in=profile_ids).lock_for_queueing()
        # With the profiles locked (MySQL, MariaDB) or the database's one writer (SQLite), no
        # other request can queue one of these pairs before this transaction ends; the
        # in-flight constraint still stands guard, and a violation is raised, not hidden.
        busy = set(
            self.active()
            .filter(customer_profile_id__in=profile_ids)
            .values_list("customer_profile_id", "policy_id")
        )
        fresh = {p: policy for p, policy in pairs.items() if (p, policy) not in busy}
        self.bulk_create(
            [
                self.model(
                    customer_profile_id=profile_id,
                    policy_id=policy_id,
                    trigger=trigger,
                    requested_by_id=requested_by_id,
                    requested_at=now,
                    next_attempt_at=DatabaseNow(),
                )
                for profile_id, policy_id in fresh.items()
            ]
        )
        # Not every backend returns the new ids from a bulk insert (MySQL does not): each new
        # row is the one in-flight evaluation of its pair.
        ids = sorted(
            pk
            for pk, profile_id, policy_id in self.active()
            .filter(customer_profile_id__in=list(fresh))
            .values_list("pk", "customer_profile_id", "policy_id")
            if fresh[profile_id] == policy_id
        )
        CustomerProfile.objects.filter(pk__in=list(fresh)).refresh_latest()
        return ids

    def _queue_many_postgresql(
        self,
        pairs: Mapping[int, int],
        now: datetime.datetime,
        trigger: str,
        requested_by_id: int | None,
    ) -> list[int]:
        from trusthub_eval.models import CustomerProfile

        evaluation = self.model._meta
        profile = CustomerProfile._meta
        column = {f.name: f.column for f in evaluation.concrete_fields}
        sql = f"""
            WITH new AS (
                INSERT INTO {evaluation.db_table} (
                    {column["customer_profile"]}, {column["policy"]}, {column["state"]},
                    {column["trigger"]}, {column["requested_by"]}, {column["requested_at"]},
                    {column["attempts"]}, {column["error_message"]}, {column["next_attempt_at"]}
                )
                SELECT pair.profile_id, pair.policy_id, %s, %s, %s, %s, 0, '', {statements.NOW}
                FROM unnest(%s::bigint[], %s::bigint[]) AS pair(profile_id, policy_id)
                ORDER BY pair.profile_id
                ON CONFLICT (
                    {column["customer_profile"]}, {column["policy"]}, {column["in_flight"]}
                ) DO NOTHING
                RETURNING id, {column["customer_profile"]} AS profile_id
            ), latest AS (
                UPDATE {profile.db_table} AS profile
                SET {profile.get_field("latest_evaluation").column} = new.id
                FROM new WHERE profile.{profile.pk.column} = new.profile_id
            )
            SELECT id FROM new ORDER BY id
        """  # noqa: S608 (identifiers come from our own model metadata, values are parameters)
        params = [
            self.model.State.QUEUED,
            trigger,
            requested_by_id,
            now,
            list(pairs.keys()),
            list(pairs.values()),
        ]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return [row[0] for row in cursor.fetchall()]

    def with_failing_count(self) -> EvaluationQuerySet:
        """Annotate ``failing_count``: how many requirements failed, by a subquery per row."""
        from trusthub_eval.models import RequirementResult

        failing = (
            RequirementResult.objects.filter(evaluation=OuterRef("pk"), passed=False)
            .order_by()
            .values("evaluation")
            .annotate(n=Count("pk"))
            .values("n")
        )
        return self.annotate(failing_count=Coalesce(Subquery(failing), Value(0)))

    def claim(
        self, evaluation_id: int, *, running_timeout: float, token: datetime.datetime | None = None
    ) -> Evaluation | None:
        """Atomically mark a queued evaluation as running and return it; None if not ours.

        A row left running longer than ``running_timeout`` seconds (its worker died) may be
        claimed again, and so may a row still running under ``token``: the fencing token of an
        attempt that could not put it back in the queue. ``started_at`` is that token: whoever
        stores the outcome must still hold the same value. Every time here is the database's
        (:mod:`trusthub_eval.clock`), never this process's.

        The same statement sets the posting mark (``posted_at``) unless an earlier attempt's is
        still there, so the mark is committed before any POST without a write of its own. A
        mark equal to ``started_at`` is this claim's; any other predates it
        (``Evaluation.awaits_reconciliation``). An attempt that ends without sending its POST
        clears it again; a worker that dies first leaves it, which costs its successor one
        listing.
        """
        if statements.supported(self.db):
            return statements.claim(
                self.model, self.db, evaluation_id, running_timeout=running_timeout, token=token
            )
        claimable = Q(state=self.model.State.QUEUED) | Q(
            state=self.model.State.RUNNING, started_at__lt=ago(running_timeout)
        )
        if token is not None:
            claimable |= Q(state=self.model.State.RUNNING, started_at=token)
        now = DatabaseNow()
        claimed = self.filter(claimable, pk=evaluation_id).update(
            state=self.model.State.RUNNING,
            started_at=now,
            attempts=F("attempts") + 1,
            posted_at=Coalesce("posted_at", now),
        )
        if not claimed:
            return None
        return (
            self.select_related("customer_profile", "policy")
            .defer("raw", "customer_profile__raw", "policy__raw", "policy__requirements")
            .get(pk=evaluation_id)
        )

    def _held(self, evaluation: Evaluation) -> EvaluationQuerySet:
        return self.filter(
            pk=evaluation.pk, state=self.model.State.RUNNING, started_at=evaluation.started_at
        )

    def _read(self, evaluation: Evaluation, name: str) -> Any:
        """A field as the database now holds it (a time it has just set from its own clock)."""
        return self.filter(pk=evaluation.pk).values_list(name, flat=True).get()

    def mark_posting(self, evaluation: Evaluation) -> bool:
        """Move the posting mark to the database's now, before a POST sent after a listing
        that showed none for the earlier one; False if the claim was lost meanwhile."""
        held = self._held(evaluation)
        with transaction.atomic(using=self.db):
            if not held.update(posted_at=DatabaseNow()):
                return False
            evaluation.posted_at = self._read(evaluation, "posted_at")
        return True

    def release_for_retry(
        self,
        evaluation: Evaluation,
        *,
        error_code: int | None,
        error_message: str,
        posted: bool,
        countdown: float,
        count_attempt: bool = True,
    ) -> bool:
        """Put a running evaluation back in the queue after a transient error.

        ``posted`` says whether TrustHub may hold an evaluation made for it (an unanswered POST
        not yet reconciled): if not, the reconciliation mark is cleared. The row is due again
        in ``countdown`` seconds. ``count_attempt=False`` gives the attempt back (nothing
        reached TrustHub, e.g. while waiting for a concurrency slot).
        """
        fields: dict[str, Any] = {
            "state": self.model.State.QUEUED,
            "error_code": error_code,
            "error_message": error_message,
            "next_attempt_at": later(countdown),
        }
        if not posted:
            fields["posted_at"] = None
        if not count_attempt:
            fields["attempts"] = F("attempts") - 1
            evaluation.attempts -= 1
        return bool(self._held(evaluation).update(**fields))

    def record_failure(
        self,
        evaluation: Evaluation,
        *,
        error_code: int | None,
        error_message: str,
        posted: bool,
        raw: Any = None,
    ) -> bool:
        """Mark a running evaluation failed for good; False if the claim was lost meanwhile.

        ``posted`` keeps the reconciliation mark: TrustHub may hold an evaluation made for this
        one (``trusthub_sync --evaluations`` adopts it). ``raw`` is TrustHub's last answer.
        """
        fields: dict[str, Any] = {
            "state": self.model.State.FAILED,
            "completed_at": DatabaseNow(),
            "error_code": error_code,
            "error_message": error_message,
            "raw": raw,
        }
        if not posted:
            fields["posted_at"] = None
        held = self._held(evaluation)
        with transaction.atomic(using=self.db):
            if not held.update(**fields):
                return False
            evaluation.completed_at = self._read(evaluation, "completed_at")
        for name, value in fields.items():
            if name != "completed_at":
                setattr(evaluation, name, value)
        return True

    def record_result(self, evaluation: Evaluation, payload: Mapping[str, Any]) -> Recorded | None:
        """Store TrustHub's (checked) answer on a running evaluation, one row per requirement,
        and make it the profile's compliance if it is the newest; one transaction.

        Returns None (and stores nothing) if the claim was lost meanwhile. An evaluation SID
        already stored by an import (``trusthub_sync --evaluations``) is this same evaluation:
        the import is replaced by this row. One stored by another request raises
        :class:`~trusthub_eval.exceptions.SidTaken`.
        """
        from trusthub_eval.models import CustomerProfile

        fields = self._answer_fields(payload)
        # No savepoint: the row's UPDATE comes first, so a conflict on its SID leaves nothing to
        # keep and the whole transaction is rolled back. On PostgreSQL it is one statement,
        # atomic by itself, unless a caller's transaction needs a savepoint around it.
        single = (
            statements.supported(self.db)
            and not transaction.get_connection(self.db).in_atomic_block
        )
        try:
            with contextlib.nullcontext() if single else transaction.atomic(using=self.db):
                return self._complete(evaluation, payload, fields)
        except IntegrityError as error:
            conflict = error
        with transaction.atomic():
            adopted = self._adopt_import_of(evaluation, payload["sid"])
            if adopted is None:
                raise conflict  # not the SID: some other constraint
            if not adopted:
                return None
            recorded = self._complete(evaluation, payload, fields)
            CustomerProfile.objects.filter(pk=evaluation.customer_profile_id).refresh_latest()
            return recorded

    def _answer_fields(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """What a checked answer sets on its evaluation (the completion time aside: the
        database's)."""
        return {
            "sid": payload["sid"],
            "status": payload["status"],
            "date_created": parse_twilio_datetime(payload.get("date_created")),
            "raw": dict(payload),
            "state": self.model.State.COMPLETED,
            "posted_at": None,
            "next_attempt_at": None,
            "error_code": None,
            "error_message": "",
        }

    def _complete(
        self, evaluation: Evaluation, payload: Mapping[str, Any], fields: dict[str, Any]
    ) -> Recorded | None:
        from trusthub_eval.models import RequirementResult

        rows = RequirementResult.objects.rows_from_payload(payload)
        failing = sum(not row["passed"] for row in rows)
        if statements.supported(self.db):
            done = statements.complete(evaluation, self.db, fields, rows, failing=failing)
            if done is None:
                return None
            evaluation.completed_at, recorded = done
            for name, value in fields.items():
                setattr(evaluation, name, value)
            return recorded
        return self._complete_rows(self._held(evaluation), evaluation, fields, rows, failing)

    def _complete_rows(
        self,
        target: EvaluationQuerySet,
        evaluation: Evaluation,
        fields: dict[str, Any],
        rows: list[dict[str, Any]],
        failing: int,
    ) -> Recorded | None:
        """The ORM's way of storing an answer on ``evaluation`` if ``target`` (its row, under
        some condition) matches; call in a transaction."""
        from trusthub_eval.models import CustomerProfile, RequirementResult

        if not target.update(**fields, completed_at=DatabaseNow()):
            return None
        evaluation.completed_at = self._read(evaluation, "completed_at")
        for name, value in fields.items():
            setattr(evaluation, name, value)
        RequirementResult.objects.bulk_create(
            RequirementResult(evaluation_id=evaluation.pk, **row) for row in rows
        )
        return CustomerProfile.objects.record_compliance(evaluation, failing=failing)

    def keep_late_answer(
        self, evaluation: Evaluation, payload: Mapping[str, Any]
    ) -> tuple[LateAnswer, Recorded | None]:
        """Keep a (checked) answer that came for a claim already lost: never drop its SID.

        A row of ours holding the SID already has it. Otherwise the row takes it if it still
        holds none (whoever claims it now then finds it completed), storing it as
        :meth:`record_result` would; else it is kept as a :class:`DuplicateEvaluation`.
        """
        from trusthub_eval.models import DuplicateEvaluation, RequirementResult

        sid = payload["sid"]
        fields = self._answer_fields(payload)
        rows = RequirementResult.objects.rows_from_payload(payload)
        with transaction.atomic(using=self.db):
            known = DuplicateEvaluation.objects.filter(sid=sid)
            if self.filter(sid=sid).exists() or known.exists():
                return LateAnswer.HELD, None
            unanswered = self.filter(pk=evaluation.pk, sid__isnull=True).exclude(
                state=self.model.State.COMPLETED
            )
            failing = sum(not row["passed"] for row in rows)
            recorded = self._complete_rows(unanswered, evaluation, fields, rows, failing)
            if recorded is not None:
                return LateAnswer.ADOPTED, recorded
            DuplicateEvaluation.objects.create(
                sid=sid,
                evaluation_id=evaluation.pk,
                customer_profile_id=evaluation.customer_profile_id,
                policy_id=evaluation.policy_id,
                status=fields["status"],
                date_created=fields["date_created"],
                raw=fields["raw"],
                recorded_at=DatabaseNow(),
            )
            return LateAnswer.DUPLICATE, None

    def _adopt_import_of(self, evaluation: Evaluation, sid: str) -> bool | None:
        """Delete the import holding ``sid`` so ``evaluation`` can take it; call in a transaction.

        True when done; False if our claim is lost; None if no row holds ``sid``. Raises
        SidTaken if a request of ours holds it.
        """
        from trusthub_eval.exceptions import SidTaken

        holder = self.select_for_update().filter(sid=sid).values("pk", "trigger").first()
        if holder is None:
            return None
        if holder["trigger"] != self.model.Trigger.SYNC:
            raise SidTaken(sid, holder["pk"])
        if not self._held(evaluation).select_for_update().exists():
            return False
        self.filter(pk=holder["pk"]).delete()
        return True

    def import_from_payload(
        self,
        profile: CustomerProfile,
        payload: Mapping[str, Any],
        *,
        clock_skew: float,
    ) -> tuple[Evaluation, bool]:
        """Store an evaluation TrustHub already has (checked); ``created`` is False if known.

        If a request of ours for the same policy gave up, or waits, after a POST whose answer
        was lost, and TrustHub created this evaluation after that POST (give or take
        ``clock_skew`` seconds), it is that request's evaluation: it is recorded on that row
        instead of a second one.
        """
        from trusthub_eval.models import Policy, RequirementResult

        with transaction.atomic():
            known = self.filter(sid=payload["sid"]).first()
            if known is not None:
                return known, False
            policy = Policy.objects.for_sid(payload["policy_sid"])
            created_at = parse_twilio_datetime(payload.get("date_created"))
            evaluation = self._adopt_into_orphan(profile, policy, payload, created_at, clock_skew)
            if evaluation is None:
                when = created_at or timezone.now()
                evaluation = self.create(
                    sid=payload["sid"],
                    customer_profile=profile,
                    policy=policy,
                    status=payload["status"],
                    state=self.model.State.COMPLETED,
                    trigger=self.model.Trigger.SYNC,
                    requested_at=when,
                    completed_at=when,
                    date_created=created_at,
                    raw=dict(payload),
                )
            RequirementResult.objects.bulk_create(
                RequirementResult.objects.build_from_payload(evaluation, payload)
            )
        return evaluation, True

    def _adopt_into_orphan(
        self,
        profile: CustomerProfile,
        policy: Policy,
        payload: Mapping[str, Any],
        created_at: datetime.datetime | None,
        clock_skew: float,
    ) -> Evaluation | None:
        if created_at is None:
            return None
        orphans = self.filter(
            customer_profile=profile,
            policy=policy,
            sid__isnull=True,
            posted_at__lte=created_at + datetime.timedelta(seconds=clock_skew),
            # Not running: a worker reconciling it right now adopts it itself.
            state__in=[self.model.State.FAILED, self.model.State.QUEUED],
        ).order_by("posted_at", "pk")
        for orphan in orphans[:5]:
            # Guarded by its state and mark, so a worker claiming it meanwhile wins cleanly.
            adopted = self.filter(
                pk=orphan.pk, state=orphan.state, posted_at=orphan.posted_at, sid__isnull=True
            ).update(
                sid=payload["sid"],
                status=payload["status"],
                state=self.model.State.COMPLETED,
                completed_at=DatabaseNow(),
                date_created=created_at,
                raw=dict(payload),
                posted_at=None,
                next_attempt_at=None,
                error_code=None,
                error_message="",
            )
            if adopted:
                orphan.refresh_from_db()
                return orphan
        return None

    def due_for_sweep(
        self, *, overdue_after: float, running_timeout: float, waiting: int = 0
    ) -> SweepDue:
        """Evaluations whose message may be lost, and mark the queued ones as re-sent.

        Queued rows overdue by more than ``overdue_after`` seconds (their retry's countdown
        included), and running rows older than ``running_timeout`` (a worker died), both by the
        database's clock. A row is picked again only after another ``overdue_after`` seconds,
        so concurrent sweeps of several workers send few duplicates (which the claim makes
        harmless anyway). ``waiting`` is how many messages the broker still holds for the
        evaluations' queue: the newest that many overdue rows may still have theirs there (a
        backlog), so only the older ones are sent again.
        """
        queued = list(
            self.filter(state=self.model.State.QUEUED)
            .alias(due=Coalesce("next_attempt_at", "requested_at"))
            .filter(due__lt=ago(overdue_after))
            .order_by("due", "pk")
            .values_list("pk", flat=True)
        )
        queued = queued[: max(len(queued) - waiting, 0)]
        if queued:
            self.filter(pk__in=queued, state=self.model.State.QUEUED).update(
                next_attempt_at=DatabaseNow()
            )
        running = list(
            self.filter(state=self.model.State.RUNNING, started_at__lt=ago(running_timeout))
            .order_by("started_at")
            .values_list("pk", flat=True)
        )
        return SweepDue(queued=queued, running=running)

    def health(
        self, *, overdue_after: float, running_timeout: float, hours: float = 24.0
    ) -> QueueHealth:
        """What an operator watches: the queue's size and age, stuck rows, and the failures of
        evaluations requested in the last ``hours``, all by the database's clock. A few queries
        over the rows in flight and the recent failures (the state index), so it stays cheap at
        any table size."""
        state = self.model.State
        now = database_now(self.db)
        since = now - datetime.timedelta(hours=hours)
        queued, running = Q(state=state.QUEUED), Q(state=state.RUNNING)
        failed = Q(state=state.FAILED, requested_at__gte=since)
        totals = (
            self.filter(queued | running | failed)
            .alias(due=Coalesce("next_attempt_at", "requested_at"))
            .aggregate(
                queued=Count("pk", filter=queued),
                running=Count("pk", filter=running),
                oldest_queued_at=Min("requested_at", filter=queued),
                oldest_running_since=Min("started_at", filter=running),
                overdue=Count(
                    "pk",
                    filter=queued & Q(due__lt=now - datetime.timedelta(seconds=overdue_after)),
                ),
                stuck=Count(
                    "pk",
                    filter=running
                    & Q(started_at__lt=now - datetime.timedelta(seconds=running_timeout)),
                ),
                failed_recently=Count("pk", filter=failed),
                may_exist_upstream=Count("pk", filter=failed & Q(posted_at__isnull=False)),
            )
        )
        from trusthub_eval.models import DuplicateEvaluation

        duplicates = DuplicateEvaluation.objects.filter(recorded_at__gte=since).count()
        by_code = (
            self.filter(failed)
            .order_by()
            .values("error_code")
            .annotate(n=Count("pk"))
            .order_by("-n", "error_code")[:10]
        )
        return QueueHealth(
            checked_at=now,
            hours=hours,
            failures_by_code=[(row["error_code"], row["n"]) for row in by_code],
            duplicates_recently=duplicates,
            **totals,
        )


class SweepDue(NamedTuple):
    """What a sweep sends again: queued rows whose message may be lost, and running rows whose
    worker died (their claim is older than RUNNING_TIMEOUT); ids, oldest first."""

    queued: list[int]
    running: list[int]


class LateAnswer(enum.Enum):
    """What became of an answer that came for a lost claim."""

    HELD = "held"  # a row of ours holds it already
    ADOPTED = "adopted"  # the row had none and took it
    DUPLICATE = "duplicate"  # the row holds another: kept as a DuplicateEvaluation


@dataclasses.dataclass(frozen=True)
class Recorded:
    """What storing an evaluation's answer did to its profile's compliance."""

    #: The profile's compliance before (as locked in the same transaction).
    previous: str
    #: Whether the evaluation became the profile's compliance (it is the newest completed).
    applied: bool


@dataclasses.dataclass(frozen=True)
class QueueHealth:
    """A snapshot of the evaluation queue for operators (``trusthub_status``, the admin)."""

    checked_at: datetime.datetime
    queued: int
    running: int
    oldest_queued_at: datetime.datetime | None
    oldest_running_since: datetime.datetime | None
    #: Queued past their due time by more than the sweep's grace: the sweep is not running.
    overdue: int
    #: Running past RUNNING_TIMEOUT: a worker died and no sweep reclaimed the row yet.
    stuck: int
    #: The window of the failure counts.
    hours: float
    failed_recently: int
    failures_by_code: list[tuple[int | None, int]]
    #: Of those, failed while a POST was unresolved: TrustHub may hold their evaluation.
    may_exist_upstream: int
    #: Evaluations TrustHub created for a request whose row holds another, recorded in the
    #: window (see DuplicateEvaluation).
    duplicates_recently: int = 0

    @property
    def needs_attention(self) -> bool:
        return bool(self.overdue or self.stuck)


class RequirementResultQuerySet(models.QuerySet["RequirementResult"]):
    def failing(self) -> RequirementResultQuerySet:
        return self.filter(passed=False)

    def build_from_payload(
        self, evaluation: Evaluation, payload: Mapping[str, Any]
    ) -> list[RequirementResult]:
        """Unsaved rows for each item of a checked evaluation's ``results``.

        ``payload`` has passed :func:`trusthub_eval.payloads.check_evaluation`.
        """
        return [self.model(evaluation=evaluation, **row) for row in self.rows_from_payload(payload)]

    @staticmethod
    def rows_from_payload(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The field values of each requirement row of a checked evaluation, by field name."""
        return [
            {
                "position": position,
                "requirement_name": _text(item.get("requirement_name")),
                "requirement_friendly_name": _text(item.get("requirement_friendly_name")),
                "friendly_name": _text(item.get("friendly_name")),
                "object_type": _text(item.get("object_type")),
                "passed": item["passed"],
                "failure_reason": _text(item.get("failure_reason")),
                "error_code": item.get("error_code"),
                "valid": item.get("valid") or [],
                "invalid": item.get("invalid") or [],
            }
            for position, item in enumerate(payload["results"])
        ]
