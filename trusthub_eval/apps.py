"""App configuration: wiring only."""

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class TrustHubEvalConfig(AppConfig):
    name = "trusthub_eval"
    verbose_name = _("TrustHub evaluations")
    # Pinned so a host's DEFAULT_AUTO_FIELD never changes our migrations.
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery.signals import celeryd_after_setup, worker_ready

        from trusthub_eval import (
            checks,  # noqa: F401  (registers the system checks)
            tasks,  # noqa: F401  (registers the shared tasks, for eager runs)
        )
        from trusthub_eval.worker import consume_sweep_queue, start_sweeping

        celeryd_after_setup.connect(
            consume_sweep_queue, weak=False, dispatch_uid="trusthub_eval.sweep_queue"
        )
        worker_ready.connect(start_sweeping, weak=False, dispatch_uid="trusthub_eval.sweep")
