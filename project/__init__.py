"""Example Django project using trusthub_eval."""

from project.celery import app as celery_app

__all__ = ["celery_app"]
