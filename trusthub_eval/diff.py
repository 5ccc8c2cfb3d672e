"""Two evaluations' results compared requirement by requirement, and which one to compare with."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Protocol

from django.db.models import Q

from trusthub_eval.models import Evaluation


class _HasVerdict(Protocol):
    requirement_name: str
    requirement_friendly_name: str
    passed: bool


@dataclasses.dataclass(frozen=True)
class RequirementChange:
    """One requirement in a comparison: its verdict before and after (None: not evaluated)."""

    name: str
    label: str
    before: bool | None
    after: bool | None


@dataclasses.dataclass(frozen=True)
class ResultsDiff:
    """Requirements that fail now but did not, that failed but no longer do, and the rest."""

    newly_failing: list[RequirementChange]
    fixed: list[RequirementChange]
    unchanged: list[RequirementChange]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """An evaluation's previous one, and what changed since (None: nothing to compare yet)."""

    previous: Evaluation | None
    diff: ResultsDiff | None


def _verdicts(results: Iterable[_HasVerdict]) -> dict[str, tuple[str, bool]]:
    """requirement_name -> (label, passed); a requirement listed twice passes only if both do."""
    verdicts: dict[str, tuple[str, bool]] = {}
    for result in results:
        label = result.requirement_friendly_name or result.requirement_name
        _, passed_so_far = verdicts.get(result.requirement_name, (label, True))
        verdicts[result.requirement_name] = (label, passed_so_far and result.passed)
    return verdicts


def compare_results(previous: Iterable[_HasVerdict], current: Iterable[_HasVerdict]) -> ResultsDiff:
    """Compare two evaluations' results by ``requirement_name``.

    Newly failing: fails now, and passed (or was not evaluated) before. Fixed: failed before,
    and passes (or is not evaluated) now. Everything else is unchanged. Each list keeps the
    current evaluation's order, then the previous one's.
    """
    before, after = _verdicts(previous), _verdicts(current)
    diff = ResultsDiff(newly_failing=[], fixed=[], unchanged=[])
    for name in [*after, *(name for name in before if name not in after)]:
        label = (after.get(name) or before[name])[0]
        was = before[name][1] if name in before else None
        now = after[name][1] if name in after else None
        change = RequirementChange(name=name, label=label, before=was, after=now)
        if now is False and was is not False:
            diff.newly_failing.append(change)
        elif was is False and now is not False:
            diff.fixed.append(change)
        else:
            diff.unchanged.append(change)
    return diff


def previous_evaluation(evaluation: Evaluation) -> Evaluation | None:
    """The completed evaluation of the same record and policy requested just before this one."""
    return (
        Evaluation.objects.filter(
            **{f"{evaluation.kind.field}_id": evaluation.record_id},
            policy_id=evaluation.policy_id,
            state=Evaluation.State.COMPLETED,
        )
        .filter(
            Q(requested_at__lt=evaluation.requested_at)
            | Q(requested_at=evaluation.requested_at, pk__lt=evaluation.pk)
        )
        .order_by("-requested_at", "-id")
        # What the comparison names; its results are rows of their own.
        .only("sid", "requested_at")
        .first()
    )


def compare_with_previous(
    evaluation: Evaluation, results: Iterable[_HasVerdict] | None = None
) -> Comparison:
    """What changed since the previous evaluation (:func:`previous_evaluation`).

    Only a completed evaluation has results to compare: for one queued, running or failed
    the diff is None, as it is when there is no previous evaluation. ``results`` are the
    evaluation's own, when the caller has them already.
    """
    previous = previous_evaluation(evaluation)
    if previous is None or evaluation.state != Evaluation.State.COMPLETED:
        return Comparison(previous, None)
    if results is None:
        results = evaluation.requirement_results.order_by("position")
    before = previous.requirement_results.order_by("position")
    return Comparison(previous, compare_results(before, results))
