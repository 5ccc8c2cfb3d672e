"""The queueing, the claim and the stored answer as single statements on PostgreSQL.

Each is one round trip where the ORM takes several: the queueing's ``INSERT … ON CONFLICT DO
NOTHING`` that points each record at its new evaluation, the claim's ``UPDATE … RETURNING``
joined to the record and policy, and the answer's row update, requirement rows and record
compliance, each in a data-modifying CTE. Other databases take :mod:`.portable` (and
:mod:`.rows` for the answer), which do the same in a few statements. Identifiers come from
the models' metadata; every value is a parameter.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from django.db import connections, models
from django.db.models.expressions import Col

from trusthub_eval.clock import now_sql
from trusthub_eval.kinds import RecordKind
from trusthub_eval.models import RECORD_MODELS, Evaluation

#: The database's clock: every time these statements decide or record comes from it.
NOW = now_sql("postgresql")


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


@functools.cache
def _reader(
    using: str, model: type[models.Model]
) -> tuple[list[models.Field[Any, Any]], list[str], list[int]]:
    """The columns an instance of ``model`` is read from, their attribute names, and which of
    them the database's values need converting for (none, for this app's models on
    PostgreSQL). Model metadata does not change while a process runs."""
    fields = _loaded_fields(model)
    connection = connections[using]
    converting = [
        index
        for index, field in enumerate(fields)
        if _converters(connection, Col(model._meta.db_table, field))
    ]
    return fields, [f.attname for f in fields], converting


def _converters(connection: Any, column: Col) -> list[Any]:
    return [*connection.ops.get_db_converters(column), *column.get_db_converters(connection)]


def _instance(using: str, model: type[models.Model], values: Sequence[Any]) -> Any:
    """A model instance from raw column values, converted as the ORM would convert them."""
    fields, attnames, converting = _reader(using, model)
    converted = list(values)
    if converting:
        connection = connections[using]  # this thread's: converters may be bound to it
        for index in converting:
            column = Col(model._meta.db_table, fields[index])
            for converter in _converters(connection, column):
                converted[index] = converter(converted[index], column, connection)
    return model.from_db(using, attnames, converted)


def claim(
    evaluation_id: int, *, running_timeout: float, token: datetime.datetime | None
) -> Evaluation | None:
    """See :func:`trusthub_eval.queue.rows.claim`: one statement; the evaluation comes with its
    record and policy, payloads deferred. Its times are the database's."""
    model, using = Evaluation, Evaluation.objects.db
    sql, models_read = _claim_sql(using, model, with_token=token is not None)
    params: list[Any] = [
        model.State.RUNNING,
        evaluation_id,
        model.State.QUEUED,
        model.State.RUNNING,
        datetime.timedelta(seconds=running_timeout),
    ]
    if token is not None:
        params += [model.State.RUNNING, token]
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    instances: list[Any] = []
    start = 0
    for read in models_read:
        size = len(_reader(using, read)[0])
        values = row[start : start + size]
        # A record of the other kind is not joined: its columns are all null.
        instances.append(None if values[0] is None else _instance(using, read, values))
        start += size
    evaluation: Evaluation = instances[0]
    evaluation.policy = instances[-1]
    for kind, record in zip(RecordKind, instances[1:-1], strict=True):
        setattr(evaluation, kind.field, record)
    return evaluation


@functools.cache
def _claim_sql(
    using: str, model: type[Evaluation], *, with_token: bool
) -> tuple[str, tuple[type[models.Model], ...]]:
    """The claim's statement, and the models whose columns its row holds, in order: the
    evaluation, a record of each kind (one of them all nulls), the policy."""
    policy_model = model._meta.get_field("policy").related_model
    assert isinstance(policy_model, type)
    c = _quoted(using)
    quote = connections[using].ops.quote_name

    def select(alias: str, m: type[models.Model]) -> str:
        return ", ".join(f"{alias}.{quote(str(f.column))}" for f in _reader(using, m)[0])

    state, started = c(model, "state"), c(model, "started_at")
    claimable = f"{state} = %s OR ({state} = %s AND {started} < {NOW} - %s)"
    if with_token:
        claimable += f" OR ({state} = %s AND {started} = %s)"
    records = [(f"r{n}", kind, RECORD_MODELS[kind]) for n, kind in enumerate(RecordKind)]
    joins = "".join(
        f"""
        LEFT JOIN {_table(using, record)} AS {alias}
            ON {alias}.{c(record, "pk")} = claimed.{c(model, kind.field)}"""
        for alias, kind, record in records
    )
    sql = f"""
        WITH claimed AS (
            UPDATE {_table(using, model)}
            SET {state} = %s, {started} = {NOW},
                {c(model, "attempts")} = {c(model, "attempts")} + 1,
                {c(model, "posted_at")} = COALESCE({c(model, "posted_at")}, {NOW})
            WHERE {c(model, "id")} = %s AND ({claimable})
            RETURNING *
        )
        SELECT {select("claimed", model)},
            {", ".join(select(alias, record) for alias, _kind, record in records)},
            {select("o", policy_model)}
        FROM claimed {joins}
        JOIN {_table(using, policy_model)} AS o
            ON o.{c(policy_model, "pk")} = claimed.{c(model, "policy")}
    """  # noqa: S608 (identifiers from the models' metadata, values are parameters)
    return sql, (model, *(record for _alias, _kind, record in records), policy_model)


def complete(
    evaluation: Evaluation,
    using: str,
    fields: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    *,
    failing: int,
) -> tuple[datetime.datetime, str, bool] | None:
    """Store a checked answer on a running evaluation in one statement: the row (fenced by its
    claim, completed at the database's time), its requirement rows, and the record's
    compliance if this is the newest (by the record's own ``compliance_checked_at``), reading
    the previous one under the row's lock.

    Returns the completion time, the record's compliance before and whether this became it;
    None when the claim was lost (nothing is written). Raises IntegrityError when the SID is
    stored already, having written nothing.
    """
    model = type(evaluation)
    connection = connections[using]
    sql = _complete_sql(
        using, model, evaluation.kind, tuple(fields), tuple(rows[0]) if rows else None
    )
    values = [
        _field(model, name).get_db_prep_save(value, connection) for name, value in fields.items()
    ]
    params: list[Any] = [*values, evaluation.pk, model.State.RUNNING, evaluation.started_at]
    if rows:
        params.append(json.dumps(list(rows)))
    params += [fields["status"], failing]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        completed_at, previous, applied = cursor.fetchone()
    if completed_at is None:
        return None
    return completed_at, previous, applied


@functools.cache
def _complete_sql(
    using: str,
    model: type[Evaluation],
    kind: RecordKind,
    names: tuple[str, ...],
    result_names: tuple[str, ...] | None,
) -> str:
    """The statement of :func:`complete` for an evaluation of a record of ``kind``, setting
    the row's ``names`` and inserting requirement rows of ``result_names`` (None: none)."""
    record_model = RECORD_MODELS[kind]
    result_model = model._meta.get_field("requirement_results").related_model
    assert isinstance(result_model, type)
    connection = connections[using]
    c = _quoted(using)
    quote = connection.ops.quote_name
    pk = c(record_model, "pk")
    sets = ", ".join(f"{c(model, name)} = %s" for name in names)
    result_fields = [_field(result_model, name) for name in result_names or ()]
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
        if result_names is not None
        else ""
    )
    checked = c(record_model, "compliance_checked_at")
    return f"""
        WITH done AS (
            UPDATE {_table(using, model)}
            SET {sets}, {c(model, "completed_at")} = {NOW}
            WHERE {c(model, "id")} = %s AND {c(model, "state")} = %s
                AND {c(model, "started_at")} = %s
            RETURNING {c(model, "id")} AS id, {c(model, kind.field)} AS record_id,
                {c(model, "completed_at")} AS completed_at
        ), {insert} locked AS (
            SELECT p.{pk} AS id, p.{c(record_model, "compliance_status")} AS previous
            FROM {_table(using, record_model)} AS p JOIN done ON p.{pk} = done.record_id
            FOR UPDATE OF p
        ), applied AS (
            UPDATE {_table(using, record_model)} AS p
            SET {c(record_model, "compliance_status")} = %s, {checked} = done.completed_at,
                {c(record_model, "failing_requirements")} = %s
            FROM locked JOIN done ON done.record_id = locked.id
            WHERE p.{pk} = locked.id
                AND (p.{checked} IS NULL OR p.{checked} <= done.completed_at)
            RETURNING p.{pk}
        )
        SELECT (SELECT completed_at FROM done), (SELECT previous FROM locked),
            EXISTS (SELECT 1 FROM applied)
    """  # noqa: S608 (identifiers from the models' metadata, values are parameters)


def _record_type(field: models.Field[Any, Any], connection: Any) -> str:
    # jsonb_to_recordset reads JSON into the columns' own types.
    if isinstance(field, models.JSONField):
        return "jsonb"
    return str(field.db_type(connection)).split(" ")[0]


def queue_pairs(
    pairs: Mapping[int, int],
    *,
    kind: RecordKind,
    now: datetime.datetime,
    trigger: str,
    requested_by_id: int | None,
) -> list[int]:
    """See :func:`trusthub_eval.queue.rows.queue_pairs`: one statement."""
    using = Evaluation.objects.db
    with connections[using].cursor() as cursor:
        cursor.execute(
            _queue_sql(using, kind),
            [
                Evaluation.State.QUEUED,
                trigger,
                requested_by_id,
                now,
                list(pairs.keys()),
                list(pairs.values()),
            ],
        )
        return [row[0] for row in cursor.fetchall()]


@functools.cache
def _queue_sql(using: str, kind: RecordKind) -> str:
    c = _quoted(using)
    e, p = Evaluation, RECORD_MODELS[kind]
    return f"""
        WITH new AS (
            INSERT INTO {_table(using, e)} (
                {c(e, kind.field)}, {c(e, "policy")}, {c(e, "state")},
                {c(e, "trigger")}, {c(e, "requested_by")}, {c(e, "requested_at")},
                {c(e, "attempts")}, {c(e, "error_message")}, {c(e, "next_attempt_at")}
            )
            SELECT pair.record_id, pair.policy_id, %s, %s, %s, %s, 0, '', {NOW}
            FROM unnest(%s::bigint[], %s::bigint[]) AS pair(record_id, policy_id)
            ORDER BY pair.record_id
            ON CONFLICT ({c(e, kind.field)}, {c(e, "policy")}, {c(e, "in_flight")})
            DO NOTHING
            RETURNING {c(e, "id")} AS id, {c(e, kind.field)} AS record_id
        ), latest AS (
            UPDATE {_table(using, p)} AS record
            SET {c(p, "latest_evaluation")} = new.id
            FROM new WHERE record.{c(p, "pk")} = new.record_id
        )
        SELECT id FROM new ORDER BY id
    """  # noqa: S608 (identifiers come from the models' metadata, values are parameters)
