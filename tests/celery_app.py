"""The suite's Celery app, configured from the suite's settings as a host project's app is.

tests/conftest.py imports it before any test module, and it is the default app of every thread:
a live server's thread, too, sends its tasks through it, not through Celery's unconfigured
fallback app. The workers that tests/worker.py starts run it (`celery -A tests.celery_app`).
"""

from celery import Celery

app = Celery("tests")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.set_default()
