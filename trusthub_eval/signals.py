"""Public hooks for host projects; the app's own flow never depends on them."""

from django.dispatch import Signal

# Sent once an evaluation has TrustHub's answer, after the transaction commits.
# Arguments: evaluation.
evaluation_completed = Signal()

# Sent when a profile's compliance differs from its previous completed evaluation's.
# Arguments: customer_profile, evaluation, previous (status or ""), current (status).
compliance_changed = Signal()
