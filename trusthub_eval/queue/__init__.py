"""The reliability protocol: every requested evaluation ends completed or failed, exactly once in
TrustHub, whatever fails in between.

1. **Queue.** A request writes a ``queued`` row (one in flight per profile and policy, by a
   unique constraint), then sends a Celery message: only a wake-up call.
2. **Claim.** A worker takes the row in one conditional write: ``running``, ``started_at`` set
   by the database's clock. ``started_at`` fences every later write of that attempt.
3. **Mark.** The same write sets the mark, ``posted_at``, before any POST: TrustHub may hold an
   evaluation for the row from then on. A mark older than the claim is an earlier attempt's.
4. **Reconcile.** A row claimed with an earlier mark first lists the profile's evaluations
   and adopts the one that POST made; only a listing read to its end says there is none.
5. **Post** only while the claim is surely still ours (the worker's monotonic clock), never
   twice for one mark: the answer, once checked, is recorded.
6. **Record** the outcome fenced by the claim: ``completed`` (the checked answer), ``failed``
   (permanent, or out of attempts; the mark kept if TrustHub may hold one), or **release**
   the row to ``queued`` for a retry. A claim lost meanwhile records nothing; a late answer
   is kept all the same (the row, or a ``DuplicateEvaluation``).
7. **Sweep.** Every worker sends again the rows whose message may be lost: queued ones overdue,
   running ones past ``RUNNING_TIMEOUT`` (their worker died).

:mod:`.rows` holds the row's transitions, :mod:`.postgresql` and :mod:`.portable` their two back
ends, :mod:`.attempt` one attempt, :mod:`.sweep` the sweep and :mod:`.health` what operators
watch. README.md's "Never losing or duplicating an evaluation" says the same for users.
"""

from trusthub_eval.exceptions import RetryLater
from trusthub_eval.queue.attempt import Outcome, backoff, run_evaluation
from trusthub_eval.queue.health import QueueHealth, health
from trusthub_eval.queue.sweep import resume_queued

__all__ = [
    "Outcome",
    "QueueHealth",
    "RetryLater",
    "backoff",
    "health",
    "resume_queued",
    "run_evaluation",
]
