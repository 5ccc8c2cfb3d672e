"""Twilio SID kinds, their patterns and validators."""

from __future__ import annotations

import enum
import re

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _

from trusthub_eval.exceptions import TrustHubEvalError


class SidKind(enum.StrEnum):
    """The two-letter prefixes of the SIDs this app deals with."""

    ACCOUNT = "AC"
    API_KEY = "SK"
    CUSTOMER_PROFILE = "BU"
    POLICY = "RN"
    EVALUATION = "EL"

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def pattern(self) -> re.Pattern[str]:
        # Twilio's spec: two letters and 32 hex digits, e.g. ^BU[0-9a-fA-F]{32}$.
        return re.compile(rf"\A{self.value}[0-9a-fA-F]{{32}}\Z")


_LABELS = {
    SidKind.ACCOUNT: "Account SID",
    SidKind.API_KEY: "API Key SID",
    SidKind.CUSTOMER_PROFILE: "Customer Profile SID",
    SidKind.POLICY: "Policy SID",
    SidKind.EVALUATION: "Evaluation SID",
}


class InvalidSid(TrustHubEvalError, ValueError):
    """A value that is not a SID of the expected kind.

    ``label`` names what was expected when the prefix alone does not say it: a Customer
    Profile's and a Trust Product's SIDs are both BU….
    """

    def __init__(self, value: object, kind: SidKind, label: str | None = None) -> None:
        self.value = value
        self.kind = kind
        self.label = label or kind.label
        super().__init__(
            f"{value!r} is not a valid {self.label}: expected '{kind.value}' followed by "
            "32 hexadecimal digits."
        )


def is_sid(value: object, kind: SidKind) -> bool:
    """Whether ``value`` is a well-formed SID of ``kind``."""
    return isinstance(value, str) and kind.pattern.match(value) is not None


def check_sid(value: object, kind: SidKind, *, label: str | None = None) -> str:
    """Return ``value`` if it is a SID of ``kind``; raise :class:`InvalidSid` (naming ``label``
    if given, else ``kind``'s label) otherwise."""
    if not is_sid(value, kind):
        raise InvalidSid(value, kind, label)
    assert isinstance(value, str)
    return value


def sid_validator(kind: SidKind, *, label: str | None = None) -> RegexValidator:
    """A Django validator for model and form fields that hold a SID of ``kind``, called
    ``label`` in its message (the kind's own label by default)."""
    # format_lazy: translating here, at import time, would need configured settings.
    message = format_lazy(
        "{} {}: '{}' {}",
        _("Enter a valid"),
        label or kind.label,
        kind.value,
        _("followed by 32 hexadecimal digits."),
    )
    name = label.lower().replace(" ", "_") if label else f"{kind.name.lower()}_sid"
    return RegexValidator(kind.pattern, message=message, code=f"invalid_{name}")


validate_account_sid = sid_validator(SidKind.ACCOUNT)
validate_customer_profile_sid = sid_validator(SidKind.CUSTOMER_PROFILE)
validate_policy_sid = sid_validator(SidKind.POLICY)
validate_evaluation_sid = sid_validator(SidKind.EVALUATION)

__all__ = [
    "InvalidSid",
    "SidKind",
    "ValidationError",
    "check_sid",
    "is_sid",
    "sid_validator",
    "validate_account_sid",
    "validate_customer_profile_sid",
    "validate_evaluation_sid",
    "validate_policy_sid",
]
