"""Ask TrustHub to evaluate a Customer Profile or Trust Product, optionally waiting for the
answer."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from trusthub_eval import dispatch, services
from trusthub_eval.exceptions import TrustHubError
from trusthub_eval.kinds import RecordKind
from trusthub_eval.models import CustomerProfile, Evaluation, TrustProduct
from trusthub_eval.sids import InvalidSid, SidKind, check_sid


class Command(BaseCommand):
    help = (
        "Queue a TrustHub evaluation of a Customer Profile or Trust Product (BU…) and optionally "
        "wait for it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "sid",
            metavar="record_sid",
            help="The SID (BU…) of a Customer Profile or Trust Product. Which one it is comes "
            "from the records imported here, else from TrustHub.",
        )
        parser.add_argument(
            "--kind",
            choices=RecordKind.values,
            help="What the SID names, if known: then only that kind is looked for.",
        )
        parser.add_argument(
            "--policy", dest="policy_sid", help="Policy SID (RN…); default: the record's own."
        )
        parser.add_argument(
            "--wait", action="store_true", help="Wait for the worker's answer and print it."
        )
        parser.add_argument(
            "--timeout", type=float, default=120.0, help="Seconds to wait with --wait."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        kind = RecordKind(options["kind"]) if options["kind"] else None
        try:
            label = kind.sid_label if kind else "Customer Profile or Trust Product SID"
            sid = check_sid(options["sid"], SidKind.CUSTOMER_PROFILE, label=label)
            policy_sid = options["policy_sid"]
            if policy_sid is not None:
                check_sid(policy_sid, SidKind.POLICY)
        except InvalidSid as error:
            raise CommandError(str(error)) from error
        try:
            record = services.fetch_record(sid, kind)
            evaluation, created = services.request_evaluation(
                record, policy_sid, trigger=Evaluation.Trigger.CLI
            )
        except (
            TrustHubError,
            services.NoPolicy,
            services.UnknownPolicy,
            CustomerProfile.DoesNotExist,
            TrustProduct.DoesNotExist,
        ) as error:
            raise CommandError(str(error)) from error
        verb = "Queued" if created else "Already in flight:"
        self.stdout.write(
            f"{verb} evaluation #{evaluation.pk} of {record.kind.label} {record} ({record.sid})."
        )
        if evaluation.sent is False:
            problem = dispatch.transport_problem()
            message = (
                f"{problem} The evaluation is saved and runs once it is (a worker's sweep sends "
                "it)."
                if problem
                else "The Celery broker could not be reached: the evaluation is saved and will "
                "run once the broker is back (a worker's sweep sends it)."
            )
            if options["wait"]:
                raise CommandError(f"{message} Not waiting.")
            self.stderr.write(self.style.WARNING(message))
            return
        if options["wait"]:
            evaluation = self._wait(evaluation, options["timeout"])
            self._print_outcome(evaluation)

    def _wait(self, evaluation: Evaluation, timeout: float) -> Evaluation:
        deadline = time.monotonic() + timeout
        while evaluation.is_active:
            if time.monotonic() > deadline:
                raise CommandError(
                    f"Evaluation #{evaluation.pk} is still {evaluation.state} after {timeout:.0f}s;"
                    " is a Celery worker running?"
                )
            time.sleep(0.5)
            evaluation.refresh_from_db()
        return evaluation

    def _print_outcome(self, evaluation: Evaluation) -> None:
        if evaluation.state == Evaluation.State.FAILED:
            # The message names TrustHub's status and code already ("HTTP 401 (code 20003): …").
            detail = evaluation.error_message or f"code {evaluation.error_code}"
            raise CommandError(f"Evaluation #{evaluation.pk} failed: {detail}")
        style = self.style.SUCCESS if evaluation.status == "compliant" else self.style.ERROR
        self.stdout.write(style(f"{evaluation.sid}: {evaluation.status}"))
        for result in evaluation.requirement_results.order_by("position"):
            if result.passed:
                continue
            self.stdout.write(
                f"  ✗ {result.requirement_friendly_name or result.requirement_name}"
                f" [{result.error_code}]: {result.failure_reason}"
            )
            for field in result.invalid:
                if isinstance(field, dict):
                    self.stdout.write(
                        f"      - {field.get('friendly_name') or field.get('object_field')}"
                        f" [{field.get('error_code')}]: {field.get('failure_reason')}"
                    )
