"""TrustHub records mirrored locally, and the evaluations this app asks for."""

from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from trusthub_eval.kinds import RecordKind
from trusthub_eval.managers import (
    EvaluationQuerySet,
    PolicyQuerySet,
    RecordQuerySet,
    RequirementResultQuerySet,
)
from trusthub_eval.sids import (
    validate_account_sid,
    validate_evaluation_sid,
    validate_policy_sid,
)

SID_LENGTH = 34


class Policy(models.Model):
    """A TrustHub Policy (RN…): the requirements a Customer Profile is evaluated against."""

    sid = models.CharField(_("policy SID"), max_length=SID_LENGTH, validators=[validate_policy_sid])
    friendly_name = models.CharField(_("friendly name"), max_length=255, blank=True)
    requirements = models.JSONField(
        _("requirements"),
        null=True,
        blank=True,
        help_text=_("TrustHub's free-form description of what the policy requires."),
    )
    raw = models.JSONField(
        _("TrustHub payload"), null=True, blank=True, help_text=_("As TrustHub last returned it.")
    )
    synced_at = models.DateTimeField(_("synced at"), null=True, blank=True)

    objects: ClassVar[PolicyQuerySet] = PolicyQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        verbose_name = _("policy")
        verbose_name_plural = _("policies")
        ordering = ["friendly_name", "sid"]
        # Constraints rather than unique=True: PostgreSQL then builds no second, LIKE index.
        constraints = [models.UniqueConstraint(fields=["sid"], name="trusthub_policy_sid_unique")]

    def __str__(self) -> str:
        return self.friendly_name or self.sid


def _record_indexes(prefix: str) -> list[models.Index]:
    """The indexes of a record's lists and filters, named after ``prefix``."""
    return [
        models.Index(fields=["friendly_name", "sid"], name=f"{prefix}_name_idx"),
        models.Index(fields=["status"], name=f"{prefix}_status_idx"),
        models.Index(fields=["compliance_status"], name=f"{prefix}_compliance_idx"),
        models.Index(fields=["compliance_checked_at"], name=f"{prefix}_checked_idx"),
        models.Index(fields=["policy", "friendly_name", "sid"], name=f"{prefix}_policy_idx"),
        models.Index(fields=["email"], name=f"{prefix}_email_idx"),
    ]


def _sid_field(kind: RecordKind, verbose_name: Any) -> models.CharField[str, str]:
    """A record's ``sid``: each kind's own name and message."""
    return models.CharField(verbose_name, max_length=SID_LENGTH, validators=[kind.sid_validator])


def _policy_field(*, related_name: str) -> models.ForeignKey[Policy | None, Policy | None]:
    """A record's ``policy``: each kind's own reverse name (``policy.customer_profiles``)."""
    return models.ForeignKey(
        Policy,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name=related_name,
        verbose_name=_("policy"),
    )


class Record(models.Model):
    """What TrustHub evaluates, mirrored from TrustHub: a Customer Profile or a Trust Product.

    Both are TrustHub bundles with the same fields; each concrete model adds its ``sid`` and
    ``policy`` (from :func:`_sid_field` and :func:`_policy_field`: their names and reverse names
    differ) and says its ``kind``.
    """

    class Status(models.TextChoices):
        DRAFT = "draft", _("Draft")
        PENDING_REVIEW = "pending-review", _("Pending review")
        IN_REVIEW = "in-review", _("In review")
        TWILIO_REJECTED = "twilio-rejected", _("Rejected by Twilio")
        TWILIO_APPROVED = "twilio-approved", _("Approved by Twilio")

    kind: ClassVar[RecordKind]

    account_sid = models.CharField(
        _("account SID"), max_length=SID_LENGTH, blank=True, validators=[validate_account_sid]
    )
    friendly_name = models.CharField(_("friendly name"), max_length=255, blank=True)
    email = models.CharField(_("email"), max_length=255, blank=True)
    status = models.CharField(
        _("TrustHub status"), max_length=32, choices=Status.choices, blank=True
    )
    valid_until = models.DateTimeField(_("valid until"), null=True, blank=True)
    date_created = models.DateTimeField(_("created in TrustHub"), null=True, blank=True)
    date_updated = models.DateTimeField(_("updated in TrustHub"), null=True, blank=True)
    raw = models.JSONField(
        _("TrustHub payload"), null=True, blank=True, help_text=_("As TrustHub last returned it.")
    )
    synced_at = models.DateTimeField(_("synced at"), null=True, blank=True)
    # Denormalised from the evaluations so lists need no subquery per row.
    latest_evaluation = models.ForeignKey(
        "Evaluation",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        # Unindexed on purpose: it changes with every request, and without an index on it that
        # UPDATE is a cheap heap-only one on PostgreSQL.
        db_index=False,
        verbose_name=_("latest evaluation"),
        help_text=_("The most recently requested evaluation, whatever its state."),
    )
    compliance_status = models.CharField(
        _("compliance"),
        max_length=16,
        blank=True,
        help_text=_("TrustHub's verdict in the most recent completed evaluation."),
    )
    compliance_checked_at = models.DateTimeField(_("last evaluated"), null=True, blank=True)
    failing_requirements = models.PositiveIntegerField(
        _("failing requirements"),
        default=0,
        help_text=_("Requirements that failed in the most recent completed evaluation."),
    )

    class Meta:
        abstract = True
        ordering = ["friendly_name", "sid"]

    def __str__(self) -> str:
        return self.friendly_name or self.sid  # type: ignore[attr-defined]

    @property
    def errors(self) -> list[Any]:
        """TrustHub's errors of a rejection, as its last answer gave them (``raw``'s)."""
        errors = self.raw.get("errors") if isinstance(self.raw, dict) else None
        return errors if isinstance(errors, list) else []


class CustomerProfile(Record):
    """A TrustHub Customer Profile (BU…), mirrored from TrustHub."""

    kind = RecordKind.CUSTOMER_PROFILE

    sid = _sid_field(RecordKind.CUSTOMER_PROFILE, _("customer profile SID"))
    policy = _policy_field(related_name="customer_profiles")

    objects: ClassVar[RecordQuerySet[CustomerProfile]] = RecordQuerySet.as_manager()  # type: ignore[assignment]

    class Meta(Record.Meta):
        verbose_name = _("customer profile")
        verbose_name_plural = _("customer profiles")
        indexes = _record_indexes("trusthub_cp")
        constraints = [
            models.UniqueConstraint(fields=["sid"], name="trusthub_cp_sid_unique"),
        ]
        permissions = [
            ("request_evaluation", _("Can request TrustHub evaluations")),
        ]


class TrustProduct(Record):
    """A TrustHub Trust Product (BU…): A2P messaging, SHAKEN/STIR, CNAM and the like, built on a
    Customer Profile; mirrored from TrustHub."""

    kind = RecordKind.TRUST_PRODUCT

    sid = _sid_field(RecordKind.TRUST_PRODUCT, _("trust product SID"))
    policy = _policy_field(related_name="trust_products")
    customer_profile = models.ForeignKey(
        CustomerProfile,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="trust_products",
        verbose_name=_("customer profile"),
        help_text=_("The Customer Profile assigned to it in TrustHub (its entity assignments)."),
    )

    objects: ClassVar[RecordQuerySet[TrustProduct]] = RecordQuerySet.as_manager()  # type: ignore[assignment]

    class Meta(Record.Meta):
        verbose_name = _("trust product")
        verbose_name_plural = _("trust products")
        indexes = _record_indexes("trusthub_tp")
        constraints = [
            models.UniqueConstraint(fields=["sid"], name="trusthub_tp_sid_unique"),
        ]


class Evaluation(models.Model):
    """One evaluation of a profile against a policy: asked for here, answered by TrustHub."""

    class Status(models.TextChoices):
        COMPLIANT = "compliant", _("Compliant")
        NONCOMPLIANT = "noncompliant", _("Noncompliant")

    class State(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        COMPLETED = "completed", _("Completed")
        FAILED = "failed", _("Failed")

    class Trigger(models.TextChoices):
        ADMIN = "admin", _("Admin")
        API = "api", _("REST API")
        CLI = "cli", _("Command line")
        SCHEDULE = "schedule", _("Schedule")
        WEBHOOK = "webhook", _("Status callback")
        SYNC = "sync", _("Imported from TrustHub")

    ACTIVE_STATES: ClassVar[tuple[str, ...]] = (State.QUEUED, State.RUNNING)

    id = models.BigAutoField(primary_key=True)
    # NULL until TrustHub answers: many unanswered rows must not collide on the unique SID.
    sid = models.CharField(  # noqa: DJ001
        _("evaluation SID"),
        max_length=SID_LENGTH,
        null=True,
        blank=True,
        validators=[validate_evaluation_sid],
        help_text=_("TrustHub's EL… SID, known once TrustHub has answered."),
    )
    # What was evaluated: a Customer Profile or a Trust Product, exactly one (see ``record``).
    # The composite indexes below lead with these columns, so no index of their own.
    customer_profile = models.ForeignKey(
        CustomerProfile,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="evaluations",
        verbose_name=_("customer profile"),
        db_index=False,
        help_text=_("The Customer Profile evaluated; empty for a Trust Product's evaluation."),
    )
    trust_product = models.ForeignKey(
        TrustProduct,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="evaluations",
        verbose_name=_("trust product"),
        db_index=False,
        help_text=_("The Trust Product evaluated; empty for a Customer Profile's evaluation."),
    )
    policy = models.ForeignKey(
        Policy,
        on_delete=models.PROTECT,
        related_name="evaluations",
        verbose_name=_("policy"),
        db_index=False,
    )
    # NULL, not "": "TrustHub has not answered" is a different fact from any answer.
    status = models.CharField(  # noqa: DJ001
        _("compliance"),
        max_length=16,
        choices=Status.choices,
        null=True,
        blank=True,
        help_text=_("TrustHub's verdict; empty until TrustHub has answered."),
    )
    state = models.CharField(_("state"), max_length=16, choices=State.choices, default=State.QUEUED)
    trigger = models.CharField(_("trigger"), max_length=16, choices=Trigger.choices)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("requested by"),
    )
    requested_at = models.DateTimeField(_("requested at"), default=timezone.now)
    started_at = models.DateTimeField(
        _("started at"), null=True, blank=True, help_text=_("When the latest attempt began.")
    )
    completed_at = models.DateTimeField(_("completed at"), null=True, blank=True)
    date_created = models.DateTimeField(
        _("created in TrustHub"), null=True, blank=True, help_text=_("TrustHub's date_created.")
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(
        _("next attempt at"),
        null=True,
        blank=True,
        help_text=_(
            "When a queued evaluation is due to run (after a retry's backoff); a worker's sweep "
            "sends it again if it is overdue."
        ),
    )
    posted_at = models.DateTimeField(
        _("posted at"),
        null=True,
        blank=True,
        help_text=_(
            "Set while a POST to TrustHub may have been processed without our hearing a usable "
            "answer. The next attempt looks for that evaluation before asking again; on a "
            "failed evaluation it means TrustHub may hold one created after this time."
        ),
    )
    error_code = models.IntegerField(_("error code"), null=True, blank=True)
    error_message = models.TextField(_("error message"), blank=True)
    raw = models.JSONField(
        _("TrustHub payload"), null=True, blank=True, help_text=_("As TrustHub returned it.")
    )
    # The key of the one-in-flight constraint below. A partial unique index would say it more
    # directly, but MySQL and MariaDB ignore those (Django's W036); a plain unique constraint over
    # a column that is TRUE while in flight and NULL otherwise holds on every database, because
    # NULLs never collide. The database computes it, so no code path can forget to keep it in
    # step with ``state``.
    in_flight = models.GeneratedField(
        expression=models.Case(
            models.When(state__in=["queued", "running"], then=models.Value(True)),
            default=None,
            output_field=models.BooleanField(null=True),
        ),
        output_field=models.BooleanField(null=True),
        db_persist=True,
        verbose_name=_("in flight"),
        help_text=_("TRUE while queued or running, NULL otherwise; computed by the database."),
    )

    objects: ClassVar[EvaluationQuerySet] = EvaluationQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        verbose_name = _("evaluation")
        verbose_name_plural = _("evaluations")
        ordering = ["-requested_at", "-id"]
        get_latest_by = ["requested_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["sid"], name="trusthub_eval_sid_unique"),
            # At most one evaluation in flight per record + policy: a second request while one
            # is queued or running gets that row instead of a duplicate. A row's other record
            # column is NULL, and NULLs never collide.
            models.UniqueConstraint(
                fields=["customer_profile", "policy", "in_flight"],
                name="trusthub_eval_one_in_flight",
            ),
            models.UniqueConstraint(
                fields=["trust_product", "policy", "in_flight"],
                name="trusthub_eval_tp_one_in_flight",
            ),
            models.CheckConstraint(
                condition=models.Q(customer_profile__isnull=False, trust_product__isnull=True)
                | models.Q(customer_profile__isnull=True, trust_product__isnull=False),
                name="trusthub_eval_one_record",
            ),
            models.CheckConstraint(
                condition=models.Q(state__in=["queued", "running", "completed", "failed"]),
                name="trusthub_eval_state_valid",
            ),
        ]
        indexes = [
            models.Index(fields=["-requested_at", "-id"], name="trusthub_ev_requested_idx"),
            models.Index(
                fields=["customer_profile", "-requested_at", "-id"],
                name="trusthub_ev_profile_hist_idx",
            ),
            models.Index(
                fields=["trust_product", "-requested_at", "-id"], name="trusthub_ev_tp_hist_idx"
            ),
            models.Index(fields=["policy", "-requested_at", "-id"], name="trusthub_ev_policy_idx"),
            models.Index(fields=["status", "-requested_at", "-id"], name="trusthub_ev_status_idx"),
            models.Index(fields=["state", "-requested_at", "-id"], name="trusthub_ev_state_idx"),
            models.Index(
                fields=["trigger", "-requested_at", "-id"], name="trusthub_ev_trigger_idx"
            ),
        ]

    #: Not a column: whether the wake-up message for a new row reached the broker (None until
    #: the request's transaction commits). Set by :func:`trusthub_eval.services.request_evaluation`.
    sent: bool | None = None

    def __str__(self) -> str:
        return self.sid or f"Evaluation #{self.pk}"

    @property
    def kind(self) -> RecordKind:
        """The kind of record evaluated."""
        return self.kind_of(self.trust_product_id)

    @staticmethod
    def kind_of(trust_product_id: object) -> RecordKind:
        """The kind of an evaluation whose ``trust_product`` column holds ``trust_product_id``
        (set exactly for a Trust Product's evaluation: the model's constraint)."""
        if trust_product_id is not None:
            return RecordKind.TRUST_PRODUCT
        return RecordKind.CUSTOMER_PROFILE

    @property
    def record(self) -> CustomerProfile | TrustProduct:
        """What was evaluated: the Customer Profile or the Trust Product."""
        record: CustomerProfile | TrustProduct = getattr(self, self.kind.field)
        return record

    @property
    def record_id(self) -> int:
        """The primary key of what was evaluated, in its kind's table."""
        record_id: int = getattr(self, f"{self.kind.field}_id")
        return record_id

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE_STATES

    @property
    def awaits_reconciliation(self) -> bool:
        """While running: an earlier attempt's POST may have been processed. Its mark predates
        this attempt's claim, which sets one equal to ``started_at`` when there is none."""
        return self.posted_at is not None and self.posted_at != self.started_at

    @property
    def may_exist_upstream(self) -> bool:
        """Failed with its mark kept: TrustHub may hold an evaluation made for it."""
        return self.state == self.State.FAILED and self.posted_at is not None

    @property
    def duration(self) -> Any:
        """How long the latest attempt ran, from its start to the answer (or the failure)."""
        if self.started_at is None or self.completed_at is None:
            return None
        return self.completed_at - self.started_at

    @property
    def waited(self) -> Any:
        """How long the request waited for its latest attempt to start: in the queue, and in
        earlier attempts and their backoff."""
        if self.started_at is None:
            return None
        return self.started_at - self.requested_at


class RequirementResult(models.Model):
    """One requirement's outcome within an evaluation, so "which requirement fails" is a query."""

    evaluation = models.ForeignKey(
        Evaluation,
        on_delete=models.CASCADE,
        related_name="requirement_results",
        verbose_name=_("evaluation"),
        db_index=False,  # the unique (evaluation, position) index leads with it
    )
    position = models.PositiveSmallIntegerField(_("position"))
    requirement_name = models.CharField(_("requirement name"), max_length=255)
    requirement_friendly_name = models.CharField(_("requirement"), max_length=255, blank=True)
    friendly_name = models.CharField(_("object"), max_length=255, blank=True)
    object_type = models.CharField(_("object type"), max_length=255, blank=True)
    passed = models.BooleanField(_("passed"))
    failure_reason = models.TextField(_("failure reason"), blank=True)
    error_code = models.IntegerField(_("error code"), null=True, blank=True)
    valid = models.JSONField(_("valid fields"), default=list, blank=True)
    invalid = models.JSONField(_("invalid fields"), default=list, blank=True)

    objects: ClassVar[RequirementResultQuerySet] = RequirementResultQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        verbose_name = _("requirement result")
        verbose_name_plural = _("requirement results")
        ordering = ["evaluation", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["evaluation", "position"], name="trusthub_rr_unique_position"
            ),
        ]
        indexes = [
            # "Which evaluations fail requirement X": filter by name + passed, join on evaluation.
            models.Index(
                fields=["requirement_name", "passed", "evaluation"],
                name="trusthub_rr_failing_idx",
            ),
        ]

    def __str__(self) -> str:
        verdict = _("passed") if self.passed else _("failed")
        return f"{self.requirement_friendly_name or self.requirement_name}: {verdict}"


class DuplicateEvaluation(models.Model):
    """An evaluation TrustHub created for a request of ours whose row already holds another.

    It happens when an answer arrives for a claim its worker had lost (a database that stalled
    past ``RUNNING_TIMEOUT``, a process frozen mid-call) while another attempt had already
    recorded a different evaluation. TrustHub holds both; the row keeps one, and this keeps the
    other, so that no evaluation TrustHub made for us goes unrecorded.
    """

    sid = models.CharField(
        _("evaluation SID"), max_length=SID_LENGTH, validators=[validate_evaluation_sid]
    )
    evaluation = models.ForeignKey(
        Evaluation,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="duplicates",
        verbose_name=_("made for"),
        help_text=_("The evaluation whose request TrustHub answered twice."),
    )
    customer_profile = models.ForeignKey(
        CustomerProfile,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="duplicate_evaluations",
        verbose_name=_("customer profile"),
    )
    trust_product = models.ForeignKey(
        TrustProduct,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="duplicate_evaluations",
        verbose_name=_("trust product"),
    )
    policy = models.ForeignKey(
        Policy,
        on_delete=models.PROTECT,
        related_name="duplicate_evaluations",
        verbose_name=_("policy"),
    )
    status = models.CharField(
        _("compliance"), max_length=16, choices=Evaluation.Status.choices, blank=True
    )
    date_created = models.DateTimeField(_("created in TrustHub"), null=True, blank=True)
    recorded_at = models.DateTimeField(_("recorded at"), default=timezone.now, db_index=True)
    raw = models.JSONField(
        _("TrustHub payload"), null=True, blank=True, help_text=_("As TrustHub returned it.")
    )

    class Meta:
        verbose_name = _("duplicate evaluation")
        verbose_name_plural = _("duplicate evaluations")
        ordering = ["-recorded_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["sid"], name="trusthub_dup_sid_unique"),
        ]

    def __str__(self) -> str:
        return self.sid


#: The model of each kind of record.
RECORD_MODELS: dict[RecordKind, type[CustomerProfile] | type[TrustProduct]] = {
    model.kind: model for model in (CustomerProfile, TrustProduct)
}
