"""Public hooks for host projects; the app's own flow never depends on them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.dispatch import Signal

if TYPE_CHECKING:
    from trusthub_eval.models import CustomerProfile, Evaluation, TrustProduct

# Sent once an evaluation has TrustHub's answer, after the transaction commits.
# Arguments: evaluation (its ``kind`` and ``record`` say what was evaluated).
evaluation_completed = Signal()

# Sent when a record's compliance differs from its previous completed evaluation's; the sender
# is the record's model (CustomerProfile or TrustProduct).
# Arguments: record (the Customer Profile or Trust Product), kind (a RecordKind),
# customer_profile (the profile itself, or the one a Trust Product is built on; None if none),
# evaluation, previous (status or ""), current (status).
compliance_changed = Signal()


def send_compliance_changed(
    record: CustomerProfile | TrustProduct,
    evaluation: Evaluation,
    *,
    previous: str,
    current: str,
) -> None:
    """Send :data:`compliance_changed` for ``record``, with every argument it documents."""
    profile = getattr(record, "customer_profile", record)
    compliance_changed.send(
        sender=type(record),
        record=record,
        kind=record.kind,
        customer_profile=profile,
        evaluation=evaluation,
        previous=previous,
        current=current,
    )
