"""Who may request evaluations, and the permission check the API's views share."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_backends
from django.contrib.auth.backends import AllowAllUsersModelBackend, ModelBackend
from django.contrib.auth.models import Group, Permission, PermissionsMixin
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import FieldDoesNotExist
from django.db import connections, models, router

REQUEST_EVALUATION = "trusthub_eval.request_evaluation"
VIEW_EVALUATION = "trusthub_eval.view_evaluation"
# A request answers with the evaluation it queued (or the one in flight), and whether it worked
# says whether the profile exists: whoever may ask must also be allowed to see both.
REQUEST_PERMISSIONS = (
    REQUEST_EVALUATION,
    "trusthub_eval.view_customerprofile",
    VIEW_EVALUATION,
)

# Django's backends whose permissions are ModelBackend's (the second only lets inactive users
# log in).
_MODEL_BACKENDS = (ModelBackend, AllowAllUsersModelBackend)
# Where the permissions read for a user object are kept, for as long as it lives (one request).
_CACHE = "_trusthub_eval_permissions"


def view_permission(model: type[models.Model]) -> str:
    """The permission to view ``model``'s records."""
    return f"{model._meta.app_label}.view_{model._meta.model_name}"


def request_permissions(*records: type[models.Model]) -> tuple[str, ...]:
    """The permissions to queue evaluations of ``records``' records: the permission itself,
    and, as for a profile (:data:`REQUEST_PERMISSIONS`), seeing those records and evaluations."""
    return (REQUEST_EVALUATION, *(view_permission(model) for model in records), VIEW_EVALUATION)


def can_request_evaluations(user: Any, *records: type[models.Model]) -> bool:
    """Whether ``user`` may queue evaluations (from the admin or the API) of ``records``'
    records; of Customer Profiles when none are named."""
    perms = request_permissions(*records) if records else REQUEST_PERMISSIONS
    return bool(user is not None and user.is_authenticated and has_perms(user, perms))


def has_perms(user: Any, perms: Iterable[str]) -> bool:
    """``user.has_perms(perms)``: the same answer, in one query for the life of ``user``.

    Django's ``ModelBackend`` reads a user's own permissions and their groups' in two queries
    built with the ORM, which cost a quarter of a small API page's CPU. Where the answer is
    documented to be exactly that backend's (every backend in AUTHENTICATION_BACKENDS is
    Django's ``ModelBackend``, and the user model's ``has_perm`` is ``PermissionsMixin``'s), it
    is worked out here by the same rule: an active superuser has every permission, an inactive
    user none, anyone else those granted to them or to one of their groups, read in one query.
    Any other configuration is asked through ``user.has_perms()``. What is read is kept on the
    user object, which lives for one request (authentication loads it afresh each time), so a
    permission granted or revoked counts from the next request on.
    """
    perms = list(perms)
    if not perms or not _answers_as_model_backend(user):
        return bool(user.has_perms(perms))
    if not user.is_active:
        return False
    if user.is_superuser:
        return True
    granted: frozenset[str] | None = getattr(user, _CACHE, None)
    if granted is None:
        granted = _read(user)
        if granted is None:  # tables this module cannot read in one statement
            return bool(user.has_perms(perms))
        setattr(user, _CACHE, granted)
    return all(perm in granted for perm in perms)


def _answers_as_model_backend(user: Any) -> bool:
    # user.__class__, not type(user): session authentication gives a lazy object.
    user_model = user.__class__
    if not isinstance(user, PermissionsMixin):
        return False  # the user model answers has_perm() itself
    if (
        user_model.has_perm is not PermissionsMixin.has_perm
        or user_model.has_perms is not PermissionsMixin.has_perms
    ):
        return False
    backends = get_backends()
    return bool(backends) and all(type(backend) in _MODEL_BACKENDS for backend in backends)


def _read(user: Any) -> frozenset[str] | None:
    """``app_label.codename`` of every permission granted to ``user`` or their groups."""
    alias = router.db_for_read(Permission, instance=user)
    sql = _statement(user.__class__, alias)
    if sql is None:
        return None
    connection = connections[alias]
    key = user._meta.pk.get_db_prep_value(user.pk, connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, [key, key])
        return frozenset(f"{app_label}.{codename}" for app_label, codename in cursor.fetchall())


@functools.cache
def _statement(user_model: type[models.Model], alias: str) -> str | None:
    """The query of :func:`_read` for users of ``user_model``, written once per database.

    Over the tables ``PermissionsMixin`` makes (its ``user_permissions`` and ``groups``, and
    ``Group.permissions``), named as the models' ``_meta`` names them; None for a user model
    whose relations are not those.
    """
    own = _through(user_model, "user_permissions", Permission)
    memberships = _through(user_model, "groups", Group)
    grants = _through(Group, "permissions", Permission)
    if own is None or memberships is None or grants is None:
        return None
    quote = connections[alias].ops.quote_name

    def column(model: type[models.Model], name: str) -> str:
        field = model._meta.pk if name == "pk" else model._meta.get_field(name)
        assert isinstance(field, models.Field)
        assert field.column is not None
        return quote(field.column)

    own_table, own_user, own_permission = map(quote, own)
    memberships_table, member, membership_group = map(quote, memberships)
    grants_table, grant_group, grant_permission = map(quote, grants)
    permission = column(Permission, "pk")
    return f"""
        SELECT t.{column(ContentType, "app_label")}, p.{column(Permission, "codename")}
        FROM {quote(Permission._meta.db_table)} p
        JOIN {quote(ContentType._meta.db_table)} t
            ON t.{column(ContentType, "pk")} = p.{column(Permission, "content_type")}
        WHERE p.{permission} IN (
            SELECT {own_permission} FROM {own_table} WHERE {own_user} = %s
        ) OR p.{permission} IN (
            SELECT g.{grant_permission} FROM {grants_table} g
            JOIN {memberships_table} m ON m.{membership_group} = g.{grant_group}
            WHERE m.{member} = %s
        )
    """  # noqa: S608 (identifiers from the models' metadata, values are parameters)


def _through(
    model: type[models.Model], name: str, target: type[models.Model]
) -> tuple[str, str, str] | None:
    """The table of the many-to-many ``name`` from ``model`` to ``target``, and its columns
    for the two sides; None unless it is a table Django made for the relation itself."""
    try:
        field = model._meta.get_field(name)
    except FieldDoesNotExist:
        return None
    if not field.many_to_many or field.related_model is not target:
        return None
    through = getattr(model, name).through
    if not through._meta.auto_created:
        return None  # a host's own model, which may relate the two its own way
    columns = []
    for side in (model, target):
        keys = [
            key
            for key in through._meta.get_fields()
            if isinstance(key, models.ForeignKey) and key.related_model is side
        ]
        if len(keys) != 1:
            return None
        columns.append(keys[0].column)
    return through._meta.db_table, columns[0], columns[1]
