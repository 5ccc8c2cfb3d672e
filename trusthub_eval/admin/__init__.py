"""Admin: read-only mirrors of TrustHub records; importing this package registers them."""

from trusthub_eval.admin.base import ReadOnlyAdmin
from trusthub_eval.admin.customer_profile import CustomerProfileAdmin
from trusthub_eval.admin.duplicate import DuplicateEvaluationAdmin
from trusthub_eval.admin.evaluation import EvaluationAdmin
from trusthub_eval.admin.policy import PolicyAdmin
from trusthub_eval.admin.record import RecordAdmin, timeline_points
from trusthub_eval.admin.trust_product import TrustProductAdmin

# Defined beside the models now; still importable from here, where they used to be.
from trusthub_eval.diff import compare_results
from trusthub_eval.display import (
    error_code_link,
    evaluation_duration,
    format_duration,
    requirement_verdict,
)
from trusthub_eval.requirements import describe_requirements

__all__ = [
    "CustomerProfileAdmin",
    "DuplicateEvaluationAdmin",
    "EvaluationAdmin",
    "PolicyAdmin",
    "ReadOnlyAdmin",
    "RecordAdmin",
    "TrustProductAdmin",
    "compare_results",
    "describe_requirements",
    "error_code_link",
    "evaluation_duration",
    "format_duration",
    "requirement_verdict",
    "timeline_points",
]
