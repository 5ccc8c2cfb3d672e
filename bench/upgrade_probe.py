"""While `migrate` runs, read and update evaluations from another connection; report waits.

    .venv/bin/python bench/upgrade_probe.py postgresql://postgres@127.0.0.1:5432/DBNAME

DBNAME holds the million-evaluation dataset made by an earlier release (its own bench/data.py
with --database-url), not yet migrated to this one. It prints how long `migrate trusthub_eval`
took, the rows before and after, the longest one-row read plus update made on another
connection meanwhile, and the locks the migrating session held on the app's tables.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
TABLE = "trusthub_eval_evaluation"
LOCKS = """
    SELECT DISTINCT l.mode, c.relname FROM pg_locks l
    JOIN pg_class c ON c.oid = l.relation
    JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE a.datname = current_database() AND c.relname LIKE 'trusthub%%'
        AND l.pid <> ALL(%s)
"""


def main() -> None:
    url = sys.argv[1]
    conn = psycopg.connect(url, autocommit=True)
    count = f"SELECT count(*) FROM {TABLE}"
    before = conn.execute(count).fetchone()[0]
    top = conn.execute(f"SELECT max(id) FROM {TABLE}").fetchone()[0]
    stop = threading.Event()
    waits: list[float] = []
    locks: set[tuple[str, str]] = set()
    probe_conn = psycopg.connect(url, autocommit=True)
    ours = [conn.info.backend_pid, probe_conn.info.backend_pid]

    def probe() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            pk = 1 + (i * 7919) % top
            started = time.monotonic()
            probe_conn.execute(f"SELECT id, state FROM {TABLE} WHERE id = %s", (pk,))
            probe_conn.execute(
                f"UPDATE {TABLE} SET error_message = error_message WHERE id = %s",
                (pk,),
            )
            waits.append(time.monotonic() - started)
            time.sleep(0.01)

    def watch() -> None:
        watcher = psycopg.connect(url, autocommit=True)
        pids = [*ours, watcher.info.backend_pid]
        while not stop.is_set():
            locks.update(watcher.execute(LOCKS, (pids,)).fetchall())
            time.sleep(0.02)

    threads = [threading.Thread(target=probe), threading.Thread(target=watch)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "project.settings"}
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "manage.py", "migrate", "trusthub_eval"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    took = time.monotonic() - started
    time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join()
    after = conn.execute(count).fetchone()[0]
    print(out.stdout.strip())
    print(
        f"migrate took {took:.1f}s; rows before {before:,}, after {after:,}; "
        f"{len(waits)} reads+updates meanwhile, longest {max(waits) * 1000:.1f} ms, "
        f"median {sorted(waits)[len(waits) // 2] * 1000:.2f} ms"
    )
    print("locks the migration held on the app's tables:", sorted(locks))


if __name__ == "__main__":
    main()
