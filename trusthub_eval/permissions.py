"""Who may request evaluations: one rule for the REST API and the admin."""

from __future__ import annotations

from typing import Any

REQUEST_EVALUATION = "trusthub_eval.request_evaluation"
# A request answers with the evaluation it queued (or the one in flight), and whether it worked
# says whether the profile exists: whoever may ask must also be allowed to see both.
REQUEST_PERMISSIONS = (
    REQUEST_EVALUATION,
    "trusthub_eval.view_customerprofile",
    "trusthub_eval.view_evaluation",
)


def can_request_evaluations(user: Any) -> bool:
    """Whether ``user`` may queue evaluations (from the admin or the API)."""
    return bool(user is not None and user.is_authenticated and user.has_perms(REQUEST_PERMISSIONS))
