"""Schema changes on a big PostgreSQL table that stop no reader or writer for long.

The migrations' shared steps (and :class:`OnlineOperation`, which takes them on PostgreSQL and
Django's own operations elsewhere): catalog changes that wait at most a moment for their locks (and
try again), indexes built CONCURRENTLY (a build an interrupted run left invalid is built
again), constraints added NOT VALID and validated afterwards. Each step skips what an earlier,
interrupted run already did, so ``migrate`` run again finishes the job. Not a migration itself:
Django's loader skips modules whose name starts with an underscore.
"""

import contextlib
import time

from django.db import migrations, transaction
from django.db.migrations.operations.base import Operation
from django.db.utils import OperationalError

# How long a catalog change waits for its lock before it gives up and tries again: while it
# waits, every query on the table queues behind it.
LOCK_TIMEOUT = '500ms'
LOCK_ATTEMPTS = 60


class OnlineTable:
    """One table of ``schema_editor``'s PostgreSQL database, changed without long locks."""

    def __init__(self, schema_editor, model):
        self.editor = schema_editor
        self.connection = schema_editor.connection
        self.quote = schema_editor.quote_name
        self.table_name = model._meta.db_table
        self.table = self.quote(self.table_name)

    def column(self, model, name):
        """The quoted column of ``model``'s field ``name``."""
        return self.quote(model._meta.get_field(name).column)

    def fetch(self, sql, params=()):
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()

    def has_rows(self):
        return self.fetch(f'SELECT 1 FROM {self.table} LIMIT 1') is not None

    def has_column(self, name):
        return self.fetch(
            'SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s '
            'AND NOT attisdropped',
            [self.table, name],
        ) is not None

    def has_constraint(self, name):
        return self.fetch(
            'SELECT 1 FROM pg_constraint WHERE conname = %s AND conrelid = to_regclass(%s)',
            [name, self.table],
        ) is not None

    def build_index(self, name, definition, *, unique=False):
        """CREATE [UNIQUE] INDEX CONCURRENTLY, unless a valid one (or a constraint of that name)
        exists; an invalid one, left by an interrupted build, is dropped and built again."""
        if self.has_constraint(name):
            return
        index = self.quote(name)
        valid = self.fetch('SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)', [index])
        if valid is not None and valid[0]:
            return
        if valid is not None:
            self.without_statement_timeout(f'DROP INDEX CONCURRENTLY IF EXISTS {index}')
        kind = 'UNIQUE INDEX' if unique else 'INDEX'
        self.without_statement_timeout(
            f'CREATE {kind} CONCURRENTLY {index} ON {self.table} {definition}'
        )

    def add_unique_constraint(self, name, columns):
        """A unique constraint over ``columns``: its index built CONCURRENTLY, then attached."""
        self.build_index(name, f'({", ".join(columns)})', unique=True)
        if not self.has_constraint(name):
            quoted = self.quote(name)
            self.briefly(f'ALTER TABLE {self.table} ADD CONSTRAINT {quoted} UNIQUE USING INDEX {quoted}')

    def add_check_constraint(self, name, condition):
        """A CHECK constraint added NOT VALID (a catalog change), then validated: the scan of
        the rows already there holds a lock that lets reads and writes go on."""
        quoted = self.quote(name)
        if not self.has_constraint(name):
            self.briefly(
                f'ALTER TABLE {self.table} ADD CONSTRAINT {quoted} CHECK ({condition}) NOT VALID'
            )
        self.without_statement_timeout(f'ALTER TABLE {self.table} VALIDATE CONSTRAINT {quoted}')

    def drop_index(self, name):
        self.without_statement_timeout(f'DROP INDEX CONCURRENTLY IF EXISTS {self.quote(name)}')

    def without_statement_timeout(self, sql):
        """Run ``sql`` with no statement_timeout: a concurrent index build on a big table takes
        as long as it takes, and stops no one meanwhile. The session's own value comes back."""
        (previous,) = self.fetch('SHOW statement_timeout')
        self.fetch("SELECT set_config('statement_timeout', '0', false)")
        try:
            self.editor.execute(sql)
        finally:
            self.fetch("SELECT set_config('statement_timeout', %s, false)", [previous])

    def briefly(self, *steps):
        """Run ``steps`` (SQL, or functions that change the schema) in one transaction that
        waits at most LOCK_TIMEOUT for its locks.

        A catalog change takes an ACCESS EXCLUSIVE lock for a moment, but has to wait for every
        transaction already using the table, and the queries that come after wait behind it.
        Giving up quickly and trying again keeps that wait short when a long one is running.
        """
        for attempt in range(LOCK_ATTEMPTS):
            try:
                with transaction.atomic(using=self.connection.alias):
                    self.fetch("SELECT set_config('lock_timeout', %s, true)", [LOCK_TIMEOUT])
                    for step in steps:
                        if callable(step):
                            step()
                        else:
                            self.editor.execute(step)
                return
            except OperationalError as error:
                cause = error.__cause__
                code = getattr(cause, 'sqlstate', None) or getattr(cause, 'pgcode', None)
                if code != '55P03':  # lock_not_available
                    raise
                if attempt == LOCK_ATTEMPTS - 1:
                    raise OperationalError(
                        f'{self.table_name} stayed locked by other transactions for '
                        f'{LOCK_ATTEMPTS} attempts of {LOCK_TIMEOUT}; run migrate again once '
                        f'the long transactions on it have ended.'
                    ) from error
                time.sleep(min(0.1 * (attempt + 1), 2.0))


class OnlineOperation(Operation):
    """Django's ``state_operations`` on one model, for the model state and for every database
    but a PostgreSQL table with rows, where ``online`` (an :class:`OnlineTable`) makes the same
    schema without long locks. Django's operations run in one transaction where the database's
    DDL is transactional."""

    reversible = True
    reduces_to_sql = False
    model_name: str
    state_operations: list
    online: type

    def state_forwards(self, app_label, state):
        for operation in self.state_operations:
            operation.state_forwards(app_label, state)

    def django_operations(self):
        return migrations.SeparateDatabaseAndState(database_operations=self.state_operations)

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        if schema_editor.connection.vendor == 'postgresql':
            online = self.online(schema_editor, model)
            if online.chooses_online():
                online.forwards()
                return
        with self.all_or_nothing(schema_editor):
            self.django_operations().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        model = from_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        if schema_editor.connection.vendor == 'postgresql':
            self.online(schema_editor, model).backwards()
            return
        with self.all_or_nothing(schema_editor):
            self.before_backwards(model)
            self.django_operations().database_backwards(app_label, schema_editor, from_state, to_state)

    def before_backwards(self, model):
        """What must go before Django's operations are undone (rows the old schema cannot hold)."""

    def all_or_nothing(self, schema_editor):
        connection = schema_editor.connection
        if connection.features.can_rollback_ddl:
            return transaction.atomic(using=connection.alias)
        return contextlib.nullcontext()
