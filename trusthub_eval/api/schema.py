"""The API's OpenAPI inspector: drf-spectacular's, whatever the host's DEFAULT_SCHEMA_CLASS.

DRF's default DEFAULT_SCHEMA_CLASS is its own AutoSchema, which drf-spectacular refuses with
"Incompatible AutoSchema": a host that never configured drf-spectacular would get a 500 from
``schema/`` and drf_spectacular.E001 from ``check --deploy``. The views therefore carry their
inspector themselves (``schema = SpectacularSchema()``) and build their ``extend_schema``
annotations on it, instead of on the setting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django.db.models import TextChoices
from drf_spectacular import utils
from drf_spectacular.extensions import (
    OpenApiSerializerExtension,
    OpenApiSerializerFieldExtension,
)
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from rest_framework.schemas.inspectors import DefaultSchema, ViewInspector
from rest_framework.settings import api_settings

from trusthub_eval.kinds import RecordKind
from trusthub_eval.models import CustomerProfile, Evaluation

F = TypeVar("F", bound=Callable[..., Any])


def inspector_class() -> type[AutoSchema]:
    """The host's DEFAULT_SCHEMA_CLASS when it is a drf-spectacular AutoSchema, else that one."""
    configured = api_settings.DEFAULT_SCHEMA_CLASS
    if isinstance(configured, type) and issubclass(configured, AutoSchema):
        return configured
    return AutoSchema


class SpectacularSchema(DefaultSchema):
    """A view's ``schema``: a new :func:`inspector_class` instance per access, as DRF's own
    DefaultSchema does, so that concurrent schema requests never share one."""

    def __get__(self, instance: Any, owner: Any) -> ViewInspector:
        result = ViewInspector.__get__(self, instance, owner)
        if not isinstance(result, SpectacularSchema):
            return result  # a schema assigned to this one view instance
        inspector: ViewInspector = inspector_class()()
        inspector.view = instance
        return inspector


def extend_schema(**kwargs: Any) -> Callable[[F], F]:
    """drf-spectacular's ``extend_schema`` for view methods, built on :func:`inspector_class`.

    drf-spectacular subclasses the decorated method's ``schema`` if it has one, else
    DEFAULT_SCHEMA_CLASS as it is at import time; the method is given one first.
    """
    decorate = utils.extend_schema(**kwargs)

    def decorator(method: F) -> F:
        if getattr(method, "schema", None) is None:
            method.schema = inspector_class()  # type: ignore[attr-defined]
        return decorate(method)

    return decorator


# The app's choice sets, each one named component. drf-spectacular's enum hook would name them
# after the fields ("status" is two different sets here) and ask the host for
# ENUM_NAME_OVERRIDES (drf_spectacular.W001 in `check --deploy`); a $ref is left alone by it.
APP_ENUMS: dict[str, type[TextChoices]] = {
    # Both kinds of record's (Record.Status), named as it was before Trust Products.
    "CustomerProfileStatusEnum": CustomerProfile.Status,
    "RecordKindEnum": RecordKind,
    "EvaluationStatusEnum": Evaluation.Status,
    "EvaluationStateEnum": Evaluation.State,
    "EvaluationTriggerEnum": Evaluation.Trigger,
}
_BLANK = ("BlankEnum", {"enum": [""]})
_NULL = ("NullEnum", {"enum": [None]})


def _enum_name(choices: Any) -> str | None:
    values = {value for value in choices if value not in ("", None)}
    return next((name for name, enum in APP_ENUMS.items() if values == set(enum.values)), None)


def _ref(auto_schema: AutoSchema, name: str, schema: dict[str, Any]) -> dict[str, str]:
    component = ResolvedComponent(  # type: ignore[no-untyped-call]
        name=name, type=ResolvedComponent.SCHEMA, schema=schema, object=name
    )
    auto_schema.registry.register_on_missing(component)
    return component.ref


def _enum_schema(auto_schema: AutoSchema, name: str, *, blank: bool, null: bool) -> dict[str, Any]:
    # The shapes drf-spectacular's hook gives: the set, or oneOf the set, "" and null.
    enum = APP_ENUMS[name]
    refs = [
        _ref(
            auto_schema,
            name,
            {
                "enum": list(enum.values),
                "type": "string",
                "description": "\n".join(f"* `{value}` - {label}" for value, label in enum.choices),
            },
        )
    ]
    refs += [
        _ref(auto_schema, *extra) for extra, wanted in ((_BLANK, blank), (_NULL, null)) if wanted
    ]
    return refs[0] if len(refs) == 1 else {"oneOf": refs}


class AppChoiceFieldExtension(OpenApiSerializerFieldExtension):  # type: ignore[no-untyped-call]
    """The app's ChoiceFields (declared or made by a ModelSerializer) as references."""

    target_class = "rest_framework.fields.ChoiceField"
    match_subclasses = True

    @classmethod
    def _matches(cls, target: Any) -> bool:
        parent = getattr(target, "parent", None)
        return (
            super()._matches(target)
            and type(parent).__module__.startswith("trusthub_eval.")
            and _enum_name(target.choices) is not None
        )

    def map_serializer_field(self, auto_schema: AutoSchema, direction: Any) -> dict[str, Any]:
        name = _enum_name(self.target.choices)
        assert name is not None  # _matches made sure
        return _enum_schema(
            auto_schema, name, blank=self.target.allow_blank, null=self.target.allow_null
        )


class VerdictFieldExtension(OpenApiSerializerFieldExtension):  # type: ignore[no-untyped-call]
    """A record's compliance: Evaluation.Status, or null when never evaluated."""

    target_class = "trusthub_eval.api.serializers.VerdictField"

    def map_serializer_field(self, auto_schema: AutoSchema, direction: Any) -> dict[str, Any]:
        return _enum_schema(auto_schema, "EvaluationStatusEnum", blank=False, null=True)


class RecordSchema(OpenApiSerializerExtension):  # type: ignore[no-untyped-call]
    """A record's latest_evaluation may be left out (see api.serializers.shows_evaluations)."""

    target_class = "trusthub_eval.api.serializers.RecordSerializer"
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema: dict[str, Any] = auto_schema._map_serializer(
            self.target, direction, bypass_extensions=True
        )
        schema["required"] = [name for name in schema["required"] if name != "latest_evaluation"]
        return schema
