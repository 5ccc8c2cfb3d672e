"""Who may request evaluations, and the permission look-up the API's checks share."""

from __future__ import annotations

import functools
from typing import Any

from django.contrib.auth import get_backends
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Permission, PermissionsMixin
from django.core.exceptions import EmptyResultSet, ValidationError
from django.db import connections, router
from django.db.models import Model, QuerySet, Value

REQUEST_EVALUATION = "trusthub_eval.request_evaluation"
# A request answers with the evaluation it queued (or the one in flight), and whether it worked
# says whether the profile exists: whoever may ask must also be allowed to see both.
REQUEST_PERMISSIONS = (
    REQUEST_EVALUATION,
    "trusthub_eval.view_customerprofile",
    "trusthub_eval.view_evaluation",
)

# What ModelBackend does with the caches preload_permissions() fills. A subclass that overrides
# any of these may compute or keep permissions its own way, so it is left to do its own queries.
_CACHING_METHODS = (
    "has_perm",
    "get_all_permissions",
    "get_user_permissions",
    "get_group_permissions",
    "_get_permissions",
)
# The querysets it reads: when these are its own, they depend on the user's key alone.
_QUERY_METHODS = ("_get_user_permissions", "_get_group_permissions")
# A stand-in user's primary key, to find where a compiled query holds the user's: any value
# of every integer key type (Django refuses values beyond a column's range in lookups).
_PROBE = 32_000


def can_request_evaluations(user: Any) -> bool:
    """Whether ``user`` may queue evaluations (from the admin or the API)."""
    return bool(user is not None and user.is_authenticated and user.has_perms(REQUEST_PERMISSIONS))


def preload_permissions(user: Any) -> None:
    """Load what Django's ``ModelBackend`` knows of ``user``'s permissions in one query, not two.

    ``ModelBackend`` reads the user's own permissions and their groups' in two queries and keeps
    them on the user object (``_user_perm_cache``, ``_group_perm_cache``, ``_perm_cache``) for
    the rest of the request. This runs the backend's same two querysets as one ``UNION ALL`` and
    fills the same caches, so ``user.has_perm()`` still goes through every configured backend
    and ``ModelBackend`` answers from its cache. The user object lives for one request
    (authentication loads it afresh each time), so a permission granted or revoked counts from
    the next request on, as without this.

    Does nothing when the first ``ModelBackend`` among AUTHENTICATION_BACKENDS overrides how it
    caches or answers, when there is none, when the caches are already filled, for users whose
    checks need no query (anonymous, inactive, superusers) and for user models without Django's
    ``PermissionsMixin``.
    """
    if not _asks_backends(user) or not user.is_authenticated:
        return
    if not user.is_active or user.is_superuser:
        return
    if hasattr(user, "_perm_cache"):
        return
    backend = next((b for b in get_backends() if isinstance(b, ModelBackend)), None)
    if backend is None or any(
        getattr(type(backend), name) is not getattr(ModelBackend, name) for name in _CACHING_METHODS
    ):
        return
    loaded: dict[str, set[str]] = {"user": set(), "group": set()}
    for source, app_label, codename in _permission_rows(backend, user):
        loaded[source].add(f"{app_label}.{codename}")
    user._user_perm_cache = loaded["user"]
    user._group_perm_cache = loaded["group"]
    user._perm_cache = loaded["user"] | loaded["group"]


def _asks_backends(user: Any) -> bool:
    # A user model without PermissionsMixin answers has_perm() itself, without the backends.
    return isinstance(user, PermissionsMixin)


def _permission_rows(backend: ModelBackend, user: Any) -> list[tuple[str, str, str]]:
    """(source, app label, codename) of each permission ``backend`` would read for ``user``."""
    alias = router.db_for_read(Permission, instance=user)
    statement = None
    if all(getattr(type(backend), name) is getattr(ModelBackend, name) for name in _QUERY_METHODS):
        user_model: type[Model] = type(user)
        statement = _statement(user_model, alias)
    if statement is None:
        # A backend with querysets of its own (which may depend on more than the user's key).
        return list(_union(backend, user).using(alias))
    sql, params, slots = statement
    connection = connections[alias]
    key = user._meta.pk.get_db_prep_value(user.pk, connection)
    values = [key if index in slots else value for index, value in enumerate(params)]
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        return list(cursor.fetchall())


def _union(backend: ModelBackend, user: Any) -> QuerySet[Any, tuple[str, str, str]]:
    # The querysets ModelBackend itself runs (private methods; a subclass may override them).
    reader: Any = backend
    columns = ("source", "content_type__app_label", "codename")
    own = reader._get_user_permissions(user).annotate(source=Value("user"))
    groups = reader._get_group_permissions(user).annotate(source=Value("group"))
    return (  # type: ignore[no-any-return]
        own.values_list(*columns)
        .order_by()
        .union(groups.values_list(*columns).order_by(), all=True)
    )


@functools.cache
def _statement(user_model: type[Model], alias: str) -> tuple[str, tuple[Any, ...], set[int]] | None:
    """ModelBackend's union for any user of ``user_model``, compiled once: SQL, parameters, and
    the positions of the user's key among them.

    Building and compiling the querysets cost more than running them. They depend on nothing
    but the user's primary key, so they are compiled once for a stand-in user whose key is
    ``_PROBE`` and each request puts its user's key where the probe's is. None when the probe
    does not show up as expected (a primary key that is not an integer, say): then the union is
    built for each request.
    """
    try:
        probe = user_model(pk=_PROBE)
        sql, params = _union(ModelBackend(), probe).query.get_compiler(using=alias).as_sql()
    except (TypeError, ValueError, ValidationError, EmptyResultSet):
        return None
    slots = {index for index, value in enumerate(params) if value == _PROBE}
    if len(slots) != 2:  # the user's own permissions and their groups'
        return None
    return sql, tuple(params), slots
