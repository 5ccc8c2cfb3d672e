"""How the app's values read on a page: verdict badges, durations, error links, counts, JSON."""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping

from django.templatetags.static import static
from django.utils import formats
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from trusthub_eval.models import Evaluation

TWILIO_ERROR_URL = "https://www.twilio.com/docs/errors/{}"


def error_code_link(code: object) -> SafeString | str:
    """A Twilio error code linked to its page in Twilio's docs; anything else, escaped."""
    if code in (None, ""):
        return ""
    try:
        number = int(str(code))
    except ValueError:
        return format_html("{}", code)
    return format_html(
        '<a href="{}" target="_blank" rel="noopener noreferrer" class="trusthub-error-code">{}</a>',
        TWILIO_ERROR_URL.format(number),
        number,
    )


@dataclasses.dataclass(frozen=True)
class RejectionError:
    """One of TrustHub's rejection errors of a record: its code, and whatever else it says."""

    code: object = None
    details: tuple[tuple[str, str], ...] = ()


def rejection_errors(errors: object) -> list[RejectionError]:
    """A record's ``errors`` as TrustHub lists them (items of any shape; ``{"code": 18601}``
    in the spec's examples), each as its code and the rest of what it says, as text."""
    if not isinstance(errors, list):
        return []
    described = []
    for error in errors:
        if isinstance(error, Mapping):
            details = tuple(
                (str(key), value if isinstance(value, str) else pretty_json(value))
                for key, value in error.items()
                if key != "code"
            )
            described.append(RejectionError(error.get("code"), details))
        elif error is not None:
            text = error if isinstance(error, str) else pretty_json(error)
            described.append(RejectionError(details=(("", text),)))
    return described


_BADGES = {
    # key: (admin icon, label, CSS modifier)
    "compliant": ("icon-yes.svg", _("Compliant"), "compliant"),
    "noncompliant": ("icon-no.svg", _("Noncompliant"), "noncompliant"),
    # The request failed: TrustHub gave no verdict, which "Failed" under "Compliance" would seem.
    "failed": ("icon-alert.svg", _("Evaluation failed"), "failed"),
    "queued": ("icon-clock.svg", _("Queued"), "pending"),
    "running": ("icon-clock.svg", _("Running"), "pending"),
    "": ("icon-unknown.svg", _("Not evaluated"), "unknown"),
}


def _badge(icon: str, label: object, modifier: str) -> SafeString:
    return format_html(
        '<span class="trusthub-badge trusthub-{}"><img src="{}" alt="" width="13" height="13"> '
        "{}</span>",
        modifier,
        static(f"admin/img/{icon}"),
        label,
    )


def compliance_badge(key: str | None) -> SafeString:
    """An icon and a word for a verdict (compliant, noncompliant) or a state without one."""
    return _badge(*_BADGES.get(key or "", _BADGES[""]))


def requirement_verdict(passed: bool | None) -> SafeString:
    """An icon and a word for one requirement: passed, failed, or not evaluated (None)."""
    if passed is None:
        return _badge("icon-unknown.svg", _("Not evaluated"), "unknown")
    if passed:
        return _badge("icon-yes.svg", _("Passed"), "compliant")
    return _badge("icon-no.svg", _("Failed"), "noncompliant")


def evaluation_badge(evaluation: Evaluation) -> SafeString:
    """The verdict of a completed evaluation, or the state of one that has none."""
    if evaluation.state == Evaluation.State.COMPLETED:
        return compliance_badge(evaluation.status)
    return compliance_badge(evaluation.state)


def format_duration(delta: datetime.timedelta | None) -> str:
    """``850 ms``, ``4.2 s``, ``3 min 5 s``, ``2 h 10 min``; empty when unknown."""
    if delta is None:
        return ""
    seconds = delta.total_seconds()
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def evaluation_duration(evaluation: Evaluation) -> str:
    """How long the evaluation ran (not how long it waited); empty for an import, which we
    did not time."""
    if evaluation.trigger == Evaluation.Trigger.SYNC:
        return ""
    return format_duration(evaluation.duration)


def grouped(number: int) -> str:
    """``1,000,000`` (in the active locale's style): big counts are read at a glance."""
    return formats.number_format(number, force_grouping=True)


def pretty_json(value: object) -> str:
    """JSON indented, keys sorted, non-ASCII kept as it is; what JSON cannot hold, as text."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
