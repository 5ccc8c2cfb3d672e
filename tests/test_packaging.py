"""The wheel holds the app and nothing else, with what it needs at run time."""

from __future__ import annotations

import tomllib
import zipfile

from packaging.requirements import Requirement

from tests.run import MATRIX
from tests.services import ROOT


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
    for requirement in ("django", "djangorestframework", "requests", "celery"):
        assert f"Requires-Dist: {requirement}" in metadata


def test_the_django_and_python_versions_declared_are_those_make_test_runs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    djangos = {"5.2", *(combination.name.removeprefix("Django ") for combination in MATRIX)}
    pythons = {"3.11", *(combination.python for combination in MATRIX)}

    def classified(prefix: str) -> set[str]:
        return {c.removeprefix(prefix) for c in project["classifiers"] if c.startswith(prefix)}

    assert classified("Framework :: Django :: ") == djangos
    assert classified("Programming Language :: Python :: 3.") == {
        version.removeprefix("3.") for version in pythons
    }
    (django,) = [
        Requirement(line) for line in project["dependencies"] if Requirement(line).name == "django"
    ]
    candidates = {f"{major}.{minor}" for major in (4, 5, 6, 7) for minor in range(3)}
    assert {version for version in candidates if f"{version}.1" in django.specifier} == djangos
    assert project["requires-python"] == f">={min(pythons, key=lambda v: int(v.split('.')[1]))}"


def test_the_redis_extra_brings_what_a_redis_broker_needs(wheel):
    # kombu's Redis transport imports more than redis-py (packaging, for one): its own extra
    # says what, through Celery's.
    names = zipfile.ZipFile(wheel).namelist()
    metadata = (
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    )
    assert "Requires-Dist: celery[redis]>=5.4; extra == 'redis'" in metadata
