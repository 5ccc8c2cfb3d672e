"""What the API shows and accepts: SIDs for TrustHub records, our integer ids for evaluations."""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.db.models import QuerySet
from django.urls import get_script_prefix, get_urlconf
from django.utils.translation import get_language
from django.utils.translation import gettext_lazy as _
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import Direction, extend_schema_field
from rest_framework import serializers
from rest_framework.reverse import preserve_builtin_query_params, reverse

from trusthub_eval.api.filters import RECORD_FILTERS, sid_schema
from trusthub_eval.api.permissions import can_view
from trusthub_eval.kinds import RecordKind
from trusthub_eval.models import (
    RECORD_MODELS,
    CustomerProfile,
    Evaluation,
    Policy,
    Record,
    RequirementResult,
    TrustProduct,
)
from trusthub_eval.sids import SidKind, sid_validator

# URL names inside the API's namespace (trusthub_eval.api.urls sets app_name).
NAMESPACE = "trusthub_eval_api"
MAX_BULK_RECORDS = 10_000


@extend_schema_field(sid_schema(SidKind.CUSTOMER_PROFILE))
class RecordSidField(serializers.CharField):
    """The SID of a Customer Profile or a Trust Product (both BU…), named by its kind in
    messages."""

    def __init__(self, kind: RecordKind = RecordKind.CUSTOMER_PROFILE, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validators.append(kind.sid_validator)


# Its name from before Trust Products, kept for hosts that import it.
CustomerProfileSidField = RecordSidField


def related_sid(kind: RecordKind, source: str, help_text: Any) -> RecordSidField:
    """The SID of the record of ``kind`` a relation that may be null leads to."""
    return RecordSidField(kind, source=source, read_only=True, allow_null=True, help_text=help_text)


@extend_schema_field(sid_schema(SidKind.POLICY))
class PolicySidField(serializers.CharField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validators.append(sid_validator(SidKind.POLICY))


class VerdictField(serializers.ReadOnlyField):
    """A record's compliance: the model stores "" for "never evaluated", the API says null.

    Described in the schema by trusthub_eval.api.schema.VerdictFieldExtension.
    """

    def to_representation(self, value: Any) -> Any:
        return value or None


class RecordKindField(serializers.ChoiceField):
    """What an evaluation is of: "customer-profile" or "trust-product".

    Told by its ``trust_product`` column, set exactly for a Trust Product's evaluation (the
    model's constraint), which the list's write plan (trusthub_eval.api.rows) reads as a
    column of the row and writes by :meth:`kind_of` too.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("source", "trust_product_id")
        super().__init__(RecordKind.choices, read_only=True, **kwargs)

    def get_attribute(self, instance: Any) -> Any:
        # Never null: DRF would write a null value as null without asking the field.
        return self.kind_of(super().get_attribute(instance))

    @staticmethod
    def kind_of(trust_product_id: object) -> str:
        """The kind of an evaluation whose ``trust_product`` column holds ``trust_product_id``."""
        return Evaluation.kind_of(trust_product_id).value


# What a detail view's queryset names TrustHub's errors of a record as, selected by themselves
# (the "errors" key of the record's payload).
ERRORS_ANNOTATION = "trusthub_errors"


@extend_schema_field(
    {
        "type": "array",
        "description": "TrustHub's errors of a rejection, as its last answer gave them; "
        "empty if none.",
        "items": {
            "type": "object",
            "properties": {"code": {"type": "integer"}},
            "additionalProperties": True,
        },
    }
)
class RejectionErrorsField(serializers.ReadOnlyField):
    """TrustHub's errors of a rejected record (its ``errors`` property): a list, empty if none.

    Read from the queryset's :data:`ERRORS_ANNOTATION` where the view selected it (only that
    key of the payload: a payload nested deeper than Python decodes must not break the
    answer), else from the record's payload.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs["source"] = "*"
        super().__init__(**kwargs)

    def to_representation(self, value: Record) -> list[Any]:
        if not hasattr(value, ERRORS_ANNOTATION):
            return value.errors
        errors = getattr(value, ERRORS_ANNOTATION)
        # As the property reads the payload: anything but a list is no errors.
        return errors if isinstance(errors, list) else []


# The shapes TrustHub gives a result's field lists; kept as TrustHub sent them.
_FIELD_ITEM = {
    "friendly_name": {"type": "string"},
    "object_field": {"type": "string"},
    "failure_reason": {"type": "string", "nullable": True},
    "error_code": {"type": "integer", "nullable": True},
}


@extend_schema_field(
    {
        "type": "array",
        "description": "Fields that passed, as TrustHub reported them.",
        "items": {
            "type": "object",
            "properties": {**_FIELD_ITEM, "passed": {"type": "boolean"}},
            "additionalProperties": True,
        },
    }
)
class ValidFieldsField(serializers.JSONField):
    pass


@extend_schema_field(
    {
        "type": "array",
        "description": "Fields to fix, each with TrustHub's reason and error code.",
        "items": {"type": "object", "properties": _FIELD_ITEM, "additionalProperties": True},
    }
)
class InvalidFieldsField(serializers.JSONField):
    pass


@extend_schema_field(
    {
        "type": "object",
        "nullable": True,
        "additionalProperties": True,
        "description": "TrustHub's free-form description of what the policy requires.",
    }
)
class RequirementsField(serializers.JSONField):
    pass


def url_writer(
    view_name: str, lookup_url_kwarg: str, request: Any, format: str | None = None
) -> Callable[[Any], str]:
    """The URLs of one view for many lookup values, as DRF's ``reverse()`` writes them.

    ``reverse()`` took a sixth of a profile list page (three URLs per row); the URLs of one page
    differ only in the lookup value, so the rest is written once and each value put in. The
    path itself is the same for every request under the same URLconf, script prefix and
    language, so Django's ``reverse()`` runs once for each of those; the request adds its
    scheme and host, and DRF's built-in query parameters (``?format=``). A versioning scheme,
    which may rewrite the URL per request, gets DRF's ``reverse()`` every time.
    """
    if request is None or getattr(request, "versioning_scheme", None) is not None:
        template = reverse(
            view_name, kwargs={lookup_url_kwarg: _PLACEHOLDER}, request=request, format=format
        )
    else:
        urlconf = get_urlconf() or settings.ROOT_URLCONF
        path = _path(
            view_name, lookup_url_kwarg, format, urlconf, get_script_prefix(), get_language()
        )
        template = preserve_builtin_query_params(request.build_absolute_uri(path), request)
    head, _, tail = template.partition(_PLACEHOLDER)

    def write(value: Any) -> str:
        text = value if type(value) is int else quote(str(value), safe="")
        return f"{head}{text}{tail}"

    return write


_PLACEHOLDER = "__lookup__"


@functools.lru_cache(maxsize=256)
def _path(
    view_name: str,
    lookup_url_kwarg: str,
    format: str | None,
    urlconf: Any,
    script_prefix: str,
    language: str | None,
) -> str:
    # What DRF's reverse() asks of Django's for a request without a versioning scheme; the
    # arguments after ``format`` are what Django's reads from the thread besides the view.
    kwargs = {lookup_url_kwarg: _PLACEHOLDER}
    return reverse(view_name, kwargs=kwargs, format=format, urlconf=urlconf)


class IdentityUrlField(serializers.HyperlinkedIdentityField):
    """A ``HyperlinkedIdentityField`` that calls ``reverse()`` once per request, not per row."""

    _writer: Callable[[Any], str] | None = None
    _writer_request: Any = None
    _writer_format: str | None = None

    def get_url(self, obj: Any, view_name: str, request: Any, format: str | None) -> Any:
        value = getattr(obj, self.lookup_field)
        if value in (None, ""):
            return None
        # A serializer's fields are copied per serializer instance, which serves one request;
        # keying on the request object keeps a reused serializer correct all the same.
        if (
            self._writer is None
            or self._writer_request is not request
            or (self._writer_format != format)
        ):
            self._writer = url_writer(view_name, self.lookup_url_kwarg, request, format)
            self._writer_request, self._writer_format = request, format
        return self._writer(value)


@extend_schema_field({"type": "string", "nullable": True})
class UsernameField(serializers.ReadOnlyField):
    """A user, as ``get_username()`` names them; null for none."""

    def to_representation(self, value: Any) -> Any:
        return value.get_username()


class OmitsFields(serializers.ModelSerializer[Any]):
    # A serializer that leaves some of its fields out of some answers: omitted_fields() says
    # which, for a serializer's context; get_fields() leaves them out, and so does the list's
    # write plan (trusthub_eval.api.rows), which reads the same method rather than building
    # the fields for each request. A comment, not a docstring: drf-spectacular would take a
    # docstring as its subclasses' description.

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        fields = super().get_fields()
        for name in self.omitted_fields(self.context):
            fields.pop(name, None)
        return fields

    @classmethod
    def omitted_fields(cls, context: Mapping[str, Any]) -> Collection[str]:
        """The fields left out of the answer ``context`` is for."""
        return ()


class PolicySerializer(serializers.ModelSerializer[Policy]):
    url = IdentityUrlField(view_name=f"{NAMESPACE}:policy-detail", lookup_field="sid")
    requirements = RequirementsField(read_only=True)

    class Meta:
        model = Policy
        fields = ["url", "sid", "friendly_name", "requirements", "synced_at"]
        read_only_fields = fields


class EvaluationSummarySerializer(serializers.ModelSerializer[Evaluation]):
    """The latest evaluation of a record, as its list shows it."""

    url = IdentityUrlField(view_name=f"{NAMESPACE}:evaluation-detail")

    class Meta:
        model = Evaluation
        fields = ["id", "url", "status", "state", "requested_at", "completed_at"]
        read_only_fields = fields


def record_urls(model: type[Record]) -> tuple[IdentityUrlField, IdentityUrlField]:
    """The ``url`` and ``evaluations_url`` of a record of ``model``."""
    name = model._meta.model_name
    return (
        IdentityUrlField(view_name=f"{NAMESPACE}:{name}-detail", lookup_field="sid"),
        IdentityUrlField(
            view_name=f"{NAMESPACE}:{name}-evaluations",
            lookup_field="sid",
            help_text=_("Its evaluations, newest first; POST here to request one."),
        ),
    )


class RecordSerializer(OmitsFields, serializers.ModelSerializer[Any]):
    # The fields of both kinds of record; each kind's serializer adds its URLs (record_urls)
    # and names its model. A comment, not a docstring: drf-spectacular would take a docstring
    # as its subclasses' description.

    policy = PolicySidField(
        source="policy.sid", read_only=True, allow_null=True, help_text=_("Policy SID (RN…).")
    )
    compliance_status = VerdictField(
        help_text=_("The verdict of the most recent completed evaluation; null if none.")
    )
    latest_evaluation = EvaluationSummarySerializer(
        read_only=True,
        allow_null=True,
        help_text=_(
            "The most recently requested evaluation, whatever its state; null if none. Left "
            "out for users without trusthub_eval.view_evaluation."
        ),
    )

    class Meta:
        fields = [
            "url",
            "sid",
            "account_sid",
            "friendly_name",
            "email",
            "status",
            "policy",
            "valid_until",
            "date_created",
            "date_updated",
            "synced_at",
            "compliance_status",
            "compliance_checked_at",
            "failing_requirements",
            "latest_evaluation",
            "evaluations_url",
        ]
        read_only_fields = fields

    @classmethod
    def omitted_fields(cls, context: Mapping[str, Any]) -> Collection[str]:
        return () if shows_evaluations(context) else ("latest_evaluation",)


class CustomerProfileSerializer(RecordSerializer):
    url, evaluations_url = record_urls(CustomerProfile)

    class Meta(RecordSerializer.Meta):
        model = CustomerProfile


class TrustProductSerializer(RecordSerializer):
    url, evaluations_url = record_urls(TrustProduct)
    customer_profile = related_sid(
        RecordKind.CUSTOMER_PROFILE,
        "customer_profile.sid",
        _("The Customer Profile it is built on (BU…); null if none is known."),
    )

    class Meta(RecordSerializer.Meta):
        model = TrustProduct
        fields = [*RecordSerializer.Meta.fields]
        fields.insert(fields.index("policy") + 1, "customer_profile")
        read_only_fields = fields


# DRF takes fields off the class (to _declared_fields), so "errors" hides no Serializer.errors.
class CustomerProfileDetailSerializer(CustomerProfileSerializer):
    errors = RejectionErrorsField()  # type: ignore[assignment]

    class Meta(CustomerProfileSerializer.Meta):
        fields = [*CustomerProfileSerializer.Meta.fields, "errors"]
        read_only_fields = fields


class TrustProductDetailSerializer(TrustProductSerializer):
    errors = RejectionErrorsField()  # type: ignore[assignment]

    class Meta(TrustProductSerializer.Meta):
        fields = [*TrustProductSerializer.Meta.fields, "errors"]
        read_only_fields = fields


def shows_evaluations(context: Mapping[str, Any]) -> bool:
    """Whether the answer a serializer's ``context`` is for may show evaluations nested in it.

    Not for a user who may not read evaluations themselves, as the evaluation list would not
    show them either. A serializer without a request has no one to hide them from, and the
    schema (drf-spectacular's stand-in view) describes them for everyone.
    """
    request = context.get("request")
    if request is None or getattr(context.get("view"), "swagger_fake_view", False):
        return True
    return can_view(request.user, Evaluation)


class EvaluationSerializer(serializers.ModelSerializer[Evaluation]):
    url = IdentityUrlField(view_name=f"{NAMESPACE}:evaluation-detail")
    kind = RecordKindField(
        help_text=_("What was evaluated: a Customer Profile or a Trust Product.")
    )
    customer_profile = related_sid(
        RecordKind.CUSTOMER_PROFILE,
        "customer_profile.sid",
        _("The Customer Profile evaluated (BU…); null for a Trust Product's evaluation."),
    )
    trust_product = related_sid(
        RecordKind.TRUST_PRODUCT,
        "trust_product.sid",
        _("The Trust Product evaluated (BU…); null for a Customer Profile's evaluation."),
    )
    policy = PolicySidField(source="policy.sid", read_only=True, help_text=_("Policy SID (RN…)."))
    requested_by = UsernameField(
        help_text=_("The user who asked for it; null for schedules, the CLI and imports.")
    )

    class Meta:
        model = Evaluation
        fields = [
            "id",
            "url",
            "sid",
            "kind",
            "customer_profile",
            "trust_product",
            "policy",
            "status",
            "state",
            "trigger",
            "requested_by",
            "requested_at",
            "started_at",
            "completed_at",
            "date_created",
            "attempts",
            "error_code",
            "error_message",
        ]
        read_only_fields = fields


class RequirementResultSerializer(serializers.ModelSerializer[RequirementResult]):
    valid = ValidFieldsField(read_only=True)
    invalid = InvalidFieldsField(read_only=True)

    class Meta:
        model = RequirementResult
        fields = [
            "position",
            "requirement_name",
            "requirement_friendly_name",
            "friendly_name",
            "object_type",
            "passed",
            "failure_reason",
            "error_code",
            "valid",
            "invalid",
        ]
        read_only_fields = fields


class EvaluationDetailSerializer(EvaluationSerializer):
    results = RequirementResultSerializer(
        source="requirement_results",
        many=True,
        read_only=True,
        help_text=_("One item per requirement of the policy: whether it passed, and why not."),
    )

    class Meta(EvaluationSerializer.Meta):
        fields = [*EvaluationSerializer.Meta.fields, "results"]
        read_only_fields = fields


class PreviousEvaluationSerializer(serializers.ModelSerializer[Evaluation]):
    """The evaluation a comparison is made against."""

    url = IdentityUrlField(view_name=f"{NAMESPACE}:evaluation-detail")

    class Meta:
        model = Evaluation
        fields = ["id", "url", "sid", "requested_at"]
        read_only_fields = fields


class RequirementChangeSerializer(serializers.Serializer[Any]):
    """One requirement in the comparison of two evaluations."""

    requirement_name = serializers.CharField(
        source="name", read_only=True, help_text=_("TrustHub's name of the requirement.")
    )
    requirement_friendly_name = serializers.CharField(
        source="label",
        read_only=True,
        help_text=_("As TrustHub names it; its requirement_name where TrustHub gave no name."),
    )
    before = serializers.BooleanField(
        read_only=True,
        allow_null=True,
        help_text=_("Whether it passed in the previous evaluation; null if not evaluated there."),
    )
    after = serializers.BooleanField(
        read_only=True,
        allow_null=True,
        help_text=_("Whether it passed in this evaluation; null if not evaluated here."),
    )


def _changes(source: str, help_text: Any) -> Any:
    return RequirementChangeSerializer(
        source=f"diff.{source}", many=True, read_only=True, allow_null=True, help_text=help_text
    )


class EvaluationDiffSerializer(serializers.Serializer[Any]):
    """What changed since the previous evaluation."""

    previous = PreviousEvaluationSerializer(
        read_only=True,
        allow_null=True,
        help_text=_(
            "The completed evaluation of the same profile against the same policy requested "
            "just before this one; null if there is none. The three lists are null when "
            "there is none, and when this evaluation has not completed (queued, running or "
            "failed): only a completed evaluation has results to compare."
        ),
    )
    newly_failing = _changes(
        "newly_failing",
        _("Requirements that fail now and did not (passed, or were not evaluated); or null."),
    )
    fixed = _changes(
        "fixed",
        _("Requirements that failed and no longer do (pass, or are not evaluated); or null."),
    )
    unchanged = _changes("unchanged", _("Every other requirement of either evaluation; or null."))


class StrictSerializer(serializers.Serializer[Any]):
    """A request body that refuses fields it does not know.

    DRF ignores them, so ``{"polcy": "RN…"}`` would quietly evaluate against the profile's own
    policy: a mistake that must be said, not guessed at.
    """

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(str(name) for name in data if name not in self.fields)
            if unknown:
                expected = ", ".join(self.fields) or "-"
                message = _("Unknown field. Expected: %(fields)s.") % {"fields": expected}
                raise serializers.ValidationError({name: [message] for name in unknown})
        return super().to_internal_value(data)


class EvaluationRequestSerializer(StrictSerializer):
    """The body of a request to evaluate one record."""

    policy = PolicySidField(
        required=False,
        help_text=_(
            "Evaluate against this policy (RN…); default: the record's own policy, else (for a "
            "Customer Profile) DEFAULT_POLICY_SID. A policy not imported yet is looked up in "
            "TrustHub."
        ),
    )


class RecordFilterSerializer(StrictSerializer):
    """Which records a bulk request covers: one kind's, by the filters of its list."""

    kind = serializers.ChoiceField(
        choices=RecordKind.choices,
        default=RecordKind.CUSTOMER_PROFILE.value,
        help_text=_("Customer Profiles (the default) or Trust Products."),
    )
    policy = PolicySidField(required=False, help_text=_("Every one of this policy (RN…)."))
    status = serializers.ChoiceField(
        choices=Record.Status.choices,
        required=False,
        help_text=_("Every one with this TrustHub status."),
    )
    compliance_status = serializers.ChoiceField(
        choices=Evaluation.Status.choices,
        required=False,
        help_text=_("Every one whose most recent completed evaluation had this verdict."),
    )
    customer_profile = RecordSidField(
        RecordKind.CUSTOMER_PROFILE,
        required=False,
        help_text=_("Every Trust Product built on this Customer Profile (BU…)."),
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        kind = RecordKind(attrs.pop("kind"))
        if not attrs:
            # An empty filter would re-evaluate every record of the account: make that explicit.
            raise serializers.ValidationError(_("Give at least one of the filters."))
        if "customer_profile" in attrs and kind != RecordKind.TRUST_PRODUCT:
            message = _('Only Trust Products are built on a profile: add "kind": "%(kind)s".')
            raise serializers.ValidationError(
                {"customer_profile": [message % {"kind": RecordKind.TRUST_PRODUCT.value}]}
            )
        return {"kind": kind, **attrs}


def _sids(kind: RecordKind, help_text: Any) -> Any:
    return serializers.ListField(
        child=RecordSidField(kind),
        required=False,
        min_length=1,
        max_length=MAX_BULK_RECORDS,
        help_text=help_text,
    )


# The lists of SIDs a bulk request may give, by the kind of record each names.
BULK_LISTS = {
    "customer_profiles": RecordKind.CUSTOMER_PROFILE,
    "trust_products": RecordKind.TRUST_PRODUCT,
}


class BulkEvaluationRequestSerializer(StrictSerializer):
    """The body of a request to re-evaluate many records: a list of SIDs or a filter.

    Valid, it says the ``kind`` of records named; :meth:`records` looks them up.
    """

    customer_profiles = _sids(
        RecordKind.CUSTOMER_PROFILE, _("These Customer Profiles (BU…); every one must exist.")
    )
    trust_products = _sids(
        RecordKind.TRUST_PRODUCT, _("Or these Trust Products (BU…); every one must exist.")
    )
    filter = RecordFilterSerializer(
        required=False, help_text=_("Or every record of one kind matching all of these filters.")
    )
    policy = PolicySidField(
        required=False,
        help_text=_(
            "Evaluate against this policy (RN…); default: each record's own policy, else (for "
            "a Customer Profile) DEFAULT_POLICY_SID. A policy not imported yet is looked up in "
            "TrustHub."
        ),
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        given = [name for name in (*BULK_LISTS, "filter") if name in attrs]
        if len(given) != 1:
            raise serializers.ValidationError(
                _("Give one of customer_profiles, trust_products (lists of SIDs) or filter.")
            )
        (name,) = given
        if name == "filter":
            criteria = attrs.pop("filter")
            attrs["kind"] = criteria.pop("kind")
            attrs["filter"] = criteria
        else:
            attrs["kind"] = BULK_LISTS[name]
            attrs["sids"] = (name, list(dict.fromkeys(attrs.pop(name))))
        return attrs

    def records(self) -> QuerySet[Any]:
        """The records the valid body names; a 400 naming the unknown SIDs of a list."""
        kind: RecordKind = self.validated_data["kind"]
        model = RECORD_MODELS[kind]
        if "filter" in self.validated_data:
            filterset = RECORD_FILTERS[kind](
                data=self.validated_data["filter"], queryset=model.objects.all()
            )
            filtered: QuerySet[Any] = filterset.qs
            return filtered
        name, sids = self.validated_data["sids"]
        # values_list rather than model instances: 10,000 of those take longer than the query.
        found = dict(model.objects.filter(sid__in=sids).values_list("sid", "pk"))
        missing = set(sids) - found.keys()
        if missing:
            shown = sorted(missing)[:10]
            more = len(missing) - len(shown)
            message = _("Unknown %(records)s: %(sids)s.") % {
                "records": model._meta.verbose_name_plural,
                "sids": ", ".join(shown),
            }
            if more:
                message += " " + _("(and %(n)d more)") % {"n": more}
            raise serializers.ValidationError({name: [message]})
        return model.objects.filter(pk__in=found.values())


class StrictSerializerSchema(OpenApiSerializerExtension):  # type: ignore[no-untyped-call]
    """Describe in the schema that a request body with an unknown field is refused."""

    target_class = StrictSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: Direction) -> dict[str, Any]:
        # The serializer itself, not target_class: this extension serves its subclasses.
        schema: dict[str, Any] = auto_schema._map_serializer(
            self.target, direction, bypass_extensions=True
        )
        schema["additionalProperties"] = False
        return schema


class BulkEvaluationRequestSchema(StrictSerializerSchema):  # type: ignore[no-untyped-call]
    """Describe in the schema what validate() insists on: exactly one way to name records."""

    target_class = BulkEvaluationRequestSerializer
    match_subclasses = False
    priority = 1

    def map_serializer(self, auto_schema: Any, direction: Direction) -> dict[str, Any]:
        schema: dict[str, Any] = super().map_serializer(auto_schema, direction)
        schema["oneOf"] = [{"required": [name]} for name in (*BULK_LISTS, "filter")]
        return schema


class RecordFilterSchema(StrictSerializerSchema):  # type: ignore[no-untyped-call]
    """Describe in the schema what validate() insists on: at least one criterion besides the
    kind, and a Customer Profile's Trust Products only for Trust Products."""

    target_class = RecordFilterSerializer
    match_subclasses = False
    priority = 1

    def map_serializer(self, auto_schema: Any, direction: Direction) -> dict[str, Any]:
        schema: dict[str, Any] = super().map_serializer(auto_schema, direction)
        criteria = [name for name in schema["properties"] if name != "kind"]
        schema["anyOf"] = [{"required": [name]} for name in criteria]
        # Not (customer_profile given and the kind not trust-product, or left out).
        schema["not"] = {
            "required": ["customer_profile"],
            "properties": {"kind": {"not": {"enum": [RecordKind.TRUST_PRODUCT.value]}}},
        }
        return schema


_DISPATCHED_HELP = _(
    "Whether the task broker took the wake-up message: false if it could not be reached (the "
    "evaluation is saved and runs once the broker is back), null if nothing was sent."
)


class AcceptedEvaluationSerializer(EvaluationSerializer):
    """A trigger's answer: the evaluation, and whether its message reached the broker."""

    dispatched = serializers.SerializerMethodField(help_text=_DISPATCHED_HELP)

    class Meta(EvaluationSerializer.Meta):
        fields = [*EvaluationSerializer.Meta.fields, "dispatched"]
        read_only_fields = fields

    def get_dispatched(self, evaluation: Evaluation) -> bool | None:
        return evaluation.sent


class BulkEvaluationResultSerializer(serializers.Serializer[Any]):
    """What a bulk request did."""

    queued = serializers.IntegerField(help_text=_("Evaluations queued by this request."))
    in_flight = serializers.IntegerField(
        help_text=_(
            "Records skipped because an evaluation against the same policy was queued "
            "or running already."
        )
    )
    skipped = serializers.IntegerField(
        help_text=_("Records skipped because they have no policy and none was given.")
    )
    evaluation_ids = serializers.ListField(
        child=serializers.IntegerField(), help_text=_("The ids of the evaluations queued.")
    )
    dispatched = serializers.BooleanField(
        source="sent", allow_null=True, help_text=_DISPATCHED_HELP
    )
