"""TrustHub's free-form requirement JSON read as plain structures: a policy's, a result's."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from trusthub_eval.display import pretty_json


@dataclasses.dataclass(frozen=True)
class RequirementItem:
    """One thing a policy asks for: an end-user type, a document, a supporting profile…"""

    name: str
    type: str = ""
    description: str = ""
    fields: list[str] = dataclasses.field(default_factory=list)
    # For a document requirement: the documents that satisfy it (any one of them).
    accepted: list[RequirementItem] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class RequirementSection:
    """A kind of requirement (``end_user``, ``supporting_document`` …) and its items."""

    key: str
    title: str
    items: list[RequirementItem]
    unreadable: str = ""  # pretty JSON of whatever did not have the expected shape


_SECTION_TITLES = {
    "end_user": _("End-user types"),
    "supporting_document": _("Supporting documents"),
    "supporting_trust_products": _("Supporting trust products"),
    "supporting_customer_profiles": _("Supporting customer profiles"),
}


def describe_requirements(requirements: object) -> list[RequirementSection]:
    """TrustHub's free-form ``requirements`` JSON as sections a person can read.

    Known shapes (the spec's examples) become items; anything else is kept as pretty JSON so
    nothing TrustHub said is hidden. Empty sections are left out.
    """
    if not isinstance(requirements, Mapping):
        if requirements in (None, {}, []):
            return []
        return [
            RequirementSection(
                "requirements", gettext("Requirements"), [], pretty_json(requirements)
            )
        ]
    sections = []
    for key, value in requirements.items():
        title = str(_SECTION_TITLES.get(key, str(key).replace("_", " ").capitalize()))
        items: list[RequirementItem] = []
        leftovers: list[Any] = []
        # Documents come as a list of groups (lists); the other kinds as flat lists.
        entries = value if isinstance(value, list) else [value]
        for entry in entries:
            for candidate in entry if isinstance(entry, list) else [entry]:
                item = _requirement_item(candidate)
                if item is None:
                    leftovers.append(candidate)
                else:
                    items.append(item)
        if items or leftovers:
            sections.append(
                RequirementSection(
                    str(key), title, items, pretty_json(leftovers) if leftovers else ""
                )
            )
    return sections


def _requirement_item(value: object) -> RequirementItem | None:
    if not isinstance(value, Mapping):
        return None
    name = value.get("name") or value.get("requirement_name") or value.get("type")
    if not name:
        return None
    accepted = [
        item
        for item in (_requirement_item(doc) for doc in _list(value.get("accepted_documents")))
        if item is not None
    ]
    return RequirementItem(
        name=str(name),
        # requirement_name says more than a document requirement's type ("document").
        type=str(value.get("requirement_name") or value.get("type") or ""),
        description=str(value.get("description") or ""),
        fields=[str(field) for field in _list(value.get("fields"))],
        accepted=accepted,
    )


def invalid_fields(value: object) -> list[Mapping[str, Any]]:
    """A result's ``invalid`` list with only the dictionaries (the payload is free-form)."""
    return [item for item in _list(value) if isinstance(item, Mapping)]


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []
