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

from trusthub_eval.api.filters import CustomerProfileFilter, sid_schema
from trusthub_eval.api.permissions import can_view
from trusthub_eval.models import CustomerProfile, Evaluation, Policy, RequirementResult
from trusthub_eval.sids import SidKind, sid_validator

# URL names inside the API's namespace (trusthub_eval.api.urls sets app_name).
NAMESPACE = "trusthub_eval_api"
MAX_BULK_PROFILES = 10_000


@extend_schema_field(sid_schema(SidKind.CUSTOMER_PROFILE))
class CustomerProfileSidField(serializers.CharField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validators.append(sid_validator(SidKind.CUSTOMER_PROFILE))


@extend_schema_field(sid_schema(SidKind.POLICY))
class PolicySidField(serializers.CharField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validators.append(sid_validator(SidKind.POLICY))


class VerdictField(serializers.ReadOnlyField):
    """A profile's compliance: the model stores "" for "never evaluated", the API says null.

    Described in the schema by trusthub_eval.api.schema.VerdictFieldExtension.
    """

    def to_representation(self, value: Any) -> Any:
        return value or None


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
    """The latest evaluation of a profile, as its list shows it."""

    url = IdentityUrlField(view_name=f"{NAMESPACE}:evaluation-detail")

    class Meta:
        model = Evaluation
        fields = ["id", "url", "status", "state", "requested_at", "completed_at"]
        read_only_fields = fields


class CustomerProfileSerializer(OmitsFields, serializers.ModelSerializer[CustomerProfile]):
    url = IdentityUrlField(view_name=f"{NAMESPACE}:customerprofile-detail", lookup_field="sid")
    evaluations_url = IdentityUrlField(
        view_name=f"{NAMESPACE}:customerprofile-evaluations",
        lookup_field="sid",
        help_text=_("The profile's evaluations, newest first; POST here to request one."),
    )
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
        model = CustomerProfile
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
    customer_profile = CustomerProfileSidField(
        source="customer_profile.sid",
        read_only=True,
        allow_null=True,
        help_text=_("Customer Profile SID (BU…); null for a Trust Product's evaluation."),
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
            "customer_profile",
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
    """The body of a request to evaluate one profile."""

    policy = PolicySidField(
        required=False,
        help_text=_(
            "Evaluate against this policy (RN…); default: the profile's own policy, else "
            "DEFAULT_POLICY_SID. A policy not imported yet is looked up in TrustHub."
        ),
    )


class ProfileFilterSerializer(StrictSerializer):
    """Which profiles a bulk request covers: the filters of the profile list."""

    policy = PolicySidField(required=False, help_text=_("Every profile of this policy (RN…)."))
    status = serializers.ChoiceField(
        choices=CustomerProfile.Status.choices,
        required=False,
        help_text=_("Every profile with this TrustHub status."),
    )
    compliance_status = serializers.ChoiceField(
        choices=Evaluation.Status.choices,
        required=False,
        help_text=_("Every profile whose most recent completed evaluation had this verdict."),
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:
            # An empty filter would re-evaluate every profile of the account: make that explicit.
            raise serializers.ValidationError(_("Give at least one of the filters."))
        return attrs


class BulkEvaluationRequestSerializer(StrictSerializer):
    """The body of a request to re-evaluate many profiles: a list of SIDs or a filter."""

    customer_profiles = serializers.ListField(
        child=CustomerProfileSidField(),
        required=False,
        min_length=1,
        max_length=MAX_BULK_PROFILES,
        help_text=_("These profiles (BU…); every one must exist."),
    )
    filter = ProfileFilterSerializer(
        required=False, help_text=_("Or every profile matching all of these filters.")
    )
    policy = PolicySidField(
        required=False,
        help_text=_(
            "Evaluate against this policy (RN…); default: each profile's own policy, else "
            "DEFAULT_POLICY_SID. A policy not imported yet is looked up in TrustHub."
        ),
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        sids = attrs.pop("customer_profiles", None)
        criteria = attrs.pop("filter", None)
        if (sids is None) == (criteria is None):
            raise serializers.ValidationError(
                _("Give either customer_profiles (a list of SIDs) or filter, not both.")
            )
        if sids is not None:
            attrs["profiles"] = _profiles_by_sid(list(dict.fromkeys(sids)))
        else:
            attrs["profiles"] = CustomerProfileFilter(
                data=criteria, queryset=CustomerProfile.objects.all()
            ).qs
        return attrs


def _profiles_by_sid(sids: list[str]) -> QuerySet[CustomerProfile]:
    """The profiles named, as a queryset by primary key; a 400 naming the unknown ones if any."""
    # values_list rather than model instances: 10,000 of those take longer than the query.
    found = dict(CustomerProfile.objects.filter(sid__in=sids).values_list("sid", "pk"))
    missing = set(sids) - found.keys()
    if missing:
        shown = sorted(missing)[:10]
        more = len(missing) - len(shown)
        message = _("Unknown customer profiles: %(sids)s.") % {"sids": ", ".join(shown)}
        if more:
            message += " " + _("(and %(n)d more)") % {"n": more}
        raise serializers.ValidationError({"customer_profiles": [message]})
    return CustomerProfile.objects.filter(pk__in=found.values())


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
    """Describe in the schema what validate() insists on: exactly one way to name profiles."""

    target_class = BulkEvaluationRequestSerializer
    match_subclasses = False
    priority = 1

    def map_serializer(self, auto_schema: Any, direction: Direction) -> dict[str, Any]:
        schema: dict[str, Any] = super().map_serializer(auto_schema, direction)
        schema["oneOf"] = [{"required": ["customer_profiles"]}, {"required": ["filter"]}]
        return schema


class ProfileFilterSchema(StrictSerializerSchema):  # type: ignore[no-untyped-call]
    """Describe in the schema that a filter needs at least one criterion."""

    target_class = ProfileFilterSerializer
    match_subclasses = False
    priority = 1

    def map_serializer(self, auto_schema: Any, direction: Direction) -> dict[str, Any]:
        schema: dict[str, Any] = super().map_serializer(auto_schema, direction)
        schema["minProperties"] = 1
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
            "Profiles skipped because an evaluation against the same policy was queued "
            "or running already."
        )
    )
    skipped = serializers.IntegerField(
        help_text=_("Profiles skipped because they have no policy and none was given.")
    )
    evaluation_ids = serializers.ListField(
        child=serializers.IntegerField(), help_text=_("The ids of the evaluations queued.")
    )
    dispatched = serializers.BooleanField(
        source="sent", allow_null=True, help_text=_DISPATCHED_HELP
    )
