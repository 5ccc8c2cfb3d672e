"""The worker's two writes as single statements on PostgreSQL: the claim, and the stored answer.

Each is one round trip where the ORM takes several: the claim's ``UPDATE … RETURNING`` joined to
the profile and policy in a data-modifying CTE, and the answer's row update, requirement rows and
profile compliance in another. Other databases take the ORM's path in
:mod:`trusthub_eval.managers`, which does the same in a few statements. Identifiers come from the
models' metadata; every value is a parameter.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from django.db import connections, models
from django.db.models.expressions import Col

if TYPE_CHECKING:
    from trusthub_eval.managers import Recorded
    from trusthub_eval.models import Evaluation


def supported(using: str) -> bool:
    """Whether ``using`` takes these statements (data-modifying CTEs: PostgreSQL)."""
    return connections[using].vendor == "postgresql"


def _field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    field = model._meta.get_field(name)
    assert isinstance(field, models.Field)
    return field


def _quoted(using: str) -> Any:
    """``c(model, field name)``: the field's column, quoted ("pk" for the primary key)."""
    quote = connections[using].ops.quote_name

    def column(model: type[models.Model], name: str) -> str:
        field = model._meta.pk if name == "pk" else _field(model, name)
        assert field is not None
        return str(quote(str(field.column)))

    return column


def _table(using: str, model: type[models.Model]) -> str:
    return str(connections[using].ops.quote_name(model._meta.db_table))


def _loaded_fields(model: type[models.Model]) -> list[models.Field[Any, Any]]:
    # JSON payloads stay in the database: an attempt never reads them (deferred, as the ORM
    # path's instances have them).
    return [f for f in model._meta.concrete_fields if not isinstance(f, models.JSONField)]


def _instance(
    using: str, model: type[models.Model], fields: Sequence[models.Field[Any, Any]], values: Any
) -> Any:
    """A model instance from raw column values, converted as the ORM would convert them."""
    connection = connections[using]
    converted = []
    for field, value in zip(fields, values, strict=True):
        column = Col(model._meta.db_table, field)
        for converter in [
            *connection.ops.get_db_converters(column),
            *column.get_db_converters(connection),
        ]:
            value = converter(value, column, connection)
        converted.append(value)
    return model.from_db(using, [f.attname for f in fields], converted)


def claim(
    model: type[Evaluation],
    using: str,
    evaluation_id: int,
    *,
    now: datetime.datetime,
    stale: datetime.datetime,
    token: datetime.datetime | None,
) -> Evaluation | None:
    """:meth:`EvaluationQuerySet.claim <trusthub_eval.managers.EvaluationQuerySet.claim>` in one
    statement; the evaluation comes with its profile and policy, payloads deferred."""
    profile_model = model._meta.get_field("customer_profile").related_model
    policy_model = model._meta.get_field("policy").related_model
    assert isinstance(profile_model, type)
    assert isinstance(policy_model, type)
    c = _quoted(using)
    fields = {m: _loaded_fields(m) for m in (model, profile_model, policy_model)}
    quote = connections[using].ops.quote_name

    def select(alias: str, m: type[models.Model]) -> str:
        return ", ".join(f"{alias}.{quote(str(f.column))}" for f in fields[m])

    state, started = c(model, "state"), c(model, "started_at")
    claimable = f"{state} = %s OR ({state} = %s AND {started} < %s)"
    params: list[Any] = [
        model.State.RUNNING,
        now,
        now,
        evaluation_id,
        model.State.QUEUED,
        model.State.RUNNING,
        stale,
    ]
    if token is not None:
        claimable += f" OR ({state} = %s AND {started} = %s)"
        params += [model.State.RUNNING, token]
    sql = f"""
        WITH claimed AS (
            UPDATE {_table(using, model)}
            SET {state} = %s, {started} = %s, {c(model, "attempts")} = {c(model, "attempts")} + 1,
                {c(model, "posted_at")} = COALESCE({c(model, "posted_at")}, %s)
            WHERE {c(model, "id")} = %s AND ({claimable})
            RETURNING *
        )
        SELECT {select("claimed", model)}, {select("p", profile_model)},
            {select("o", policy_model)}
        FROM claimed
        JOIN {_table(using, profile_model)} AS p
            ON p.{c(profile_model, "pk")} = claimed.{c(model, "customer_profile")}
        JOIN {_table(using, policy_model)} AS o
            ON o.{c(policy_model, "pk")} = claimed.{c(model, "policy")}
    """  # noqa: S608 (identifiers from the models' metadata, values are parameters)
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    sizes = [len(fields[m]) for m in (model, profile_model, policy_model)]
    evaluation: Evaluation = _instance(using, model, fields[model], row[: sizes[0]])
    evaluation.customer_profile = _instance(
        using, profile_model, fields[profile_model], row[sizes[0] : sizes[0] + sizes[1]]
    )
    evaluation.policy = _instance(
        using, policy_model, fields[policy_model], row[sizes[0] + sizes[1] :]
    )
    return evaluation


def complete(
    evaluation: Evaluation,
    using: str,
    fields: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    *,
    failing: int,
) -> Recorded | None:
    """Store a checked answer on a running evaluation in one statement: the row (fenced by its
    claim), its requirement rows, and the profile's compliance if this is the newest (by the
    profile's own ``compliance_checked_at``), reading the previous one under the row's lock.

    None when the claim was lost (nothing is written). Raises IntegrityError when the SID is
    stored already, having written nothing.
    """
    from trusthub_eval.managers import Recorded

    model = type(evaluation)
    profile_model = model._meta.get_field("customer_profile").related_model
    result_model = model._meta.get_field("requirement_results").related_model
    assert isinstance(profile_model, type)
    assert isinstance(result_model, type)
    connection = connections[using]
    c = _quoted(using)
    quote = connection.ops.quote_name
    pk = c(profile_model, "pk")
    sets = ", ".join(f"{c(model, name)} = %s" for name in fields)
    values = [
        _field(model, name).get_db_prep_save(value, connection) for name, value in fields.items()
    ]
    result_fields = [_field(result_model, name) for name in rows[0]] if rows else []
    columns = ", ".join(quote(str(f.column)) for f in result_fields)
    record_types = ", ".join(
        f"{quote(f.attname)} {_record_type(f, connection)}" for f in result_fields
    )
    selected = ", ".join(f"r.{quote(f.attname)}" for f in result_fields)
    insert = (
        f"""rows AS (
            INSERT INTO {_table(using, result_model)} ({c(result_model, "evaluation")}, {columns})
            SELECT done.id, {selected}
            FROM done CROSS JOIN jsonb_to_recordset(%s::jsonb) AS r({record_types})
        ),"""  # noqa: S608 (identifiers from the models' metadata)
        if rows
        else ""
    )
    checked = c(profile_model, "compliance_checked_at")
    sql = f"""
        WITH done AS (
            UPDATE {_table(using, model)} SET {sets}
            WHERE {c(model, "id")} = %s AND {c(model, "state")} = %s
                AND {c(model, "started_at")} = %s
            RETURNING {c(model, "id")} AS id, {c(model, "customer_profile")} AS profile_id
        ), {insert} locked AS (
            SELECT p.{pk} AS id, p.{c(profile_model, "compliance_status")} AS previous
            FROM {_table(using, profile_model)} AS p JOIN done ON p.{pk} = done.profile_id
            FOR UPDATE OF p
        ), applied AS (
            UPDATE {_table(using, profile_model)} AS p
            SET {c(profile_model, "compliance_status")} = %s, {checked} = %s,
                {c(profile_model, "failing_requirements")} = %s
            FROM locked
            WHERE p.{pk} = locked.id AND (p.{checked} IS NULL OR p.{checked} <= %s)
            RETURNING p.{pk}
        )
        SELECT EXISTS (SELECT 1 FROM done), (SELECT previous FROM locked),
            EXISTS (SELECT 1 FROM applied)
    """  # noqa: S608 (identifiers from the models' metadata, values are parameters)
    params: list[Any] = [*values, evaluation.pk, model.State.RUNNING, evaluation.started_at]
    if rows:
        params.append(json.dumps(list(rows)))
    params += [fields["status"], fields["completed_at"], failing, fields["completed_at"]]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        done, previous, applied = cursor.fetchone()
    if not done:
        return None
    return Recorded(previous=previous, applied=applied)


def _record_type(field: models.Field[Any, Any], connection: Any) -> str:
    # jsonb_to_recordset reads JSON into the columns' own types.
    if isinstance(field, models.JSONField):
        return "jsonb"
    return str(field.db_type(connection)).split(" ")[0]
