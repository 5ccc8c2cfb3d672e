"""The wheel holds the app and nothing else, with what it needs at run time."""

from __future__ import annotations

import zipfile


def test_wheel_contains_only_the_app(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"trusthub_eval", wheel.name.split("-py3")[0] + ".dist-info"}
    for needed in (
        "trusthub_eval/py.typed",
        "trusthub_eval/migrations/0001_initial.py",
        "trusthub_eval/sandbox/default_world.json",
    ):
        assert needed in names
    assert not any("/tests/" in name or name.endswith(".pyc") for name in names)
    metadata = (
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    )
    for requirement in ("django>=5.2", "djangorestframework", "requests", "celery"):
        assert f"Requires-Dist: {requirement}" in metadata


def test_the_redis_extra_brings_what_a_redis_broker_needs(wheel):
    # kombu's Redis transport imports more than redis-py (packaging, for one): its own extra
    # says what, through Celery's.
    names = zipfile.ZipFile(wheel).namelist()
    metadata = (
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    )
    assert "Requires-Dist: celery[redis]>=5.4; extra == 'redis'" in metadata
