"""Throughput and CPU per evaluation through real Celery workers, with TrustHub 100 ms away.

    python bench/throughput.py                          # this checkout, the default configurations
    python bench/throughput.py --compare 5f27f21        # and that commit's code, side by side
    python bench/throughput.py --code 5f27f21           # that commit's code only
    python bench/throughput.py --configs prefork:1x8,threads:1x8 --evaluations 500

What runs, all on this machine:

- the sandbox (``python -m trusthub_eval.sandbox``) serving a world of as many customer profiles
  as there are evaluations, behind ``bench/proxy.py``, which delivers every answer ``--latency``
  seconds late (the TrustHub round trip);
- PostgreSQL on 127.0.0.1:5432, in a database of the bench's own per code version, migrated and
  synced by the checkout's own ``manage.py``, dropped at the end;
- Redis on 127.0.0.1:6379 as the broker, database 12, every key under a prefix of this run's
  own (removed at the end);
- per configuration, ``W`` real ``celery worker`` processes with pool ``P`` and concurrency
  ``C`` (``prefork:2x16`` = 2 workers x 16), started with the checkout's example project, as an
  operator would (``celery -A project worker --loglevel INFO``).

Per configuration the bench inserts ``--evaluations`` queued rows, sends one run message per row,
and waits until every row is final. It prints: evaluations per second (from the first message
to the last completion); the latency limit (slots / round trip); the CPU limit (the machine's
cores / the CPU every process of the run spent per evaluation); the ratio of the throughput to
the lower of the two; the CPU per evaluation of the worker processes (their whole process tree)
and of the PostgreSQL backends serving them; the TCP connections the workers opened to TrustHub
(the proxy counts them); the most requests TrustHub had in flight at once; and the log lines per
evaluation.

CPU is read from ``/proc/<pid>/stat``. The workers' trees are read before the first message and
after the last completion. PostgreSQL backends of the bench database are found among the
postmaster's children (their command line names the database) and sampled every 20 ms; a backend
that exits (one per task when connections are not kept) is counted up to its last sample, plus
its share of what the postmaster reaped beyond the last samples of every backend that exited.
The machine is shared: the CPU others used meanwhile is printed too, and "ratio (left)" divides
by the CPU limit of what they left. "round trip ms" is the median round trip the proxy saw
(``--latency`` plus the sandbox's own time), and "ratio (round trip)" the throughput against the
latency limit it sets (and the CPU limit).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("TRUSTHUB_BENCH_PG", "postgres://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("TRUSTHUB_BENCH_REDIS", "redis://127.0.0.1:6379/12")
DEMO_WORLD = ROOT / "fixtures" / "demo" / "world.json"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DEFAULT_CONFIGS = "prefork:1x8,threads:1x8,prefork:2x16,threads:2x16,gevent:1x8,prefork:2x8:cap4"

# The Celery app every worker runs: the checkout's example project, plus the bench's broker key
# prefix and TRUSTHUB_EVAL overrides. Written to a temporary directory put first on PYTHONPATH.
_APP_SHIM = """\
import json, os
from project.celery import app
from django.conf import settings
import trusthub_eval
app.conf.broker_transport_options = {"global_keyprefix": os.environ["TRUSTHUB_BENCH_PREFIX"]}
app.conf.update(json.loads(os.environ.get("TRUSTHUB_BENCH_CELERY") or "{}"))
settings.TRUSTHUB_EVAL = {
    **settings.TRUSTHUB_EVAL, **json.loads(os.environ.get("TRUSTHUB_BENCH_SETTINGS") or "{}")
}
print("bench: trusthub_eval from", os.path.dirname(trusthub_eval.__file__), flush=True)
"""


# --- /proc ----------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            data = file.read().decode()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU of ``pid`` (and of its reaped children), in seconds; 0 if gone."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def child_pids(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as file:
                found.extend(int(p) for p in file.read().split())
        except OSError:
            continue
    return found


def tree_cpu(pid: int) -> float:
    """CPU of a process and all its descendants, living or reaped."""
    total = cpu_seconds(pid, children=True)
    for child in child_pids(pid):
        total += tree_cpu(child)
    return total


def machine_busy() -> float:
    """CPU seconds the whole machine spent not idle, since boot."""
    with open("/proc/stat") as file:
        values = [int(v) for v in file.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLOCK_TICKS


class BackendSampler:
    """The CPU of the PostgreSQL backends connected to one database, sampled in a thread."""

    def __init__(self, postmaster: int, database: str, exclude: set[int]) -> None:
        self.postmaster = postmaster
        self.token = f" {database} "
        self.exclude = exclude
        self._names: dict[int, bool] = {}
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reaped_start = 0.0

    def _ours(self, pid: int) -> bool:
        if pid not in self._names:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as file:
                    cmdline = file.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                return False
            if not cmdline.startswith("postgres: "):
                # Just forked: the backend still has the postmaster's command line until it
                # has read the connection's database and set its title. Asked again next time
                # (many backends are born in the same 20 ms when a fleet starts).
                return False
            self._names[pid] = self.token in f"{cmdline} " and pid not in self.exclude
        return self._names[pid]

    def sample(self) -> None:
        for pid in child_pids(self.postmaster):
            seconds = cpu_seconds(pid)
            self._ours(pid)
            if pid not in self._last and pid not in self._first:
                # A backend that existed at the start counts from then; a new one from its birth.
                self._first[pid] = seconds if self._thread is None else 0.0
            self._last[pid] = seconds

    def start(self) -> None:
        self._names.clear()
        self._first.clear()
        self._last.clear()
        self.reaped_start = cpu_seconds(self.postmaster, children=True) - cpu_seconds(
            self.postmaster
        )
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.sample()

    def stop(self) -> dict[str, float]:
        self.sample()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._stop.clear()
        self._thread = None
        alive = set(child_pids(self.postmaster))
        reaped = (
            cpu_seconds(self.postmaster, children=True)
            - cpu_seconds(self.postmaster)
            - self.reaped_start
        )
        ours = exited_ours = exited_all = 0.0
        exited_ours_n = exited_all_n = 0
        for pid, last in self._last.items():
            used = last - self._first[pid]
            mine = self._names.get(pid, False)
            if pid not in alive:
                exited_all += used
                exited_all_n += 1
                if mine:
                    exited_ours += used
                    exited_ours_n += 1
            if mine:
                ours += used
        tail = max(reaped - exited_all, 0.0)
        if exited_all_n:
            ours += tail * exited_ours_n / exited_all_n
        return {
            "cpu": ours,
            "exited": exited_ours_n,
            "others_exited": exited_all_n - exited_ours_n,
            "tail": tail,
        }


# --- services ---------------------------------------------------------------------------------


def psql(database: str = "postgres") -> Any:
    import psycopg

    return psycopg.connect(f"{PG_URL}/{database}", autocommit=True)


@dataclasses.dataclass
class Side:
    """One version of the code: its checkout, its database, its Python path."""

    label: str
    checkout: Path
    database: str

    @property
    def database_url(self) -> str:
        return f"{PG_URL}/{self.database}"


def extract(revision: str, into: Path) -> Path:
    """The tree of ``revision`` (a commit of this repository) as plain files under ``into``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision], cwd=ROOT, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def make_world(path: Path, profiles: int) -> None:
    """The demo world with ``profiles`` customer profiles: copies of the demo's, new SIDs."""
    world = json.loads(DEMO_WORLD.read_text())
    templates = world["customer_profiles"]
    made = []
    for index in range(profiles):
        profile = json.loads(json.dumps(templates[index % len(templates)]))
        profile["sid"] = "BU" + secrets.token_hex(16)
        profile["friendly_name"] = f"Bench profile {index:05d}"
        for kind in ("end_users", "supporting_documents", "supporting_customer_profiles"):
            for item in profile.get(kind) or []:
                if "sid" in item:
                    item["sid"] = item["sid"][:2] + secrets.token_hex(16)
        profile["supporting_customer_profiles"] = []
        made.append(profile)
    world["customer_profiles"] = made
    world["evaluations"] = []
    world["concurrency_limit"] = None
    path.write_text(json.dumps(world))


class Process:
    """A child process whose output lines are kept (and counted) by a thread."""

    def __init__(self, command: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip())
            if " ready." in line or line.startswith(("listening", "TrustHub sandbox listening")):
                self.ready.set()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_ready(self, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(self.lines[-40:])
                raise SystemExit(f"{what} did not start:\n{tail}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- one configuration ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
    pool: str
    workers: int
    concurrency: int
    cap: int | None = None

    @classmethod
    def parse(cls, text: str) -> Config:
        match = re.fullmatch(r"(prefork|threads|gevent|eventlet):(\d+)x(\d+)(?::cap(\d+))?", text)
        if not match:
            raise SystemExit(f"bad configuration {text!r}: expected e.g. prefork:2x16 or :cap8")
        pool, workers, concurrency, cap = match.groups()
        return cls(pool, int(workers), int(concurrency), int(cap) if cap else None)

    @property
    def name(self) -> str:
        cap = f", cap {self.cap}" if self.cap else ""
        return f"{self.workers} x {self.pool} {self.concurrency}{cap}"

    @property
    def slots(self) -> int:
        return min(self.workers * self.concurrency, self.cap or 10**9)


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.prefix = f"trusthub-bench-{secrets.token_hex(4)}:"
        self.world = tmp / "world.json"
        self.shim = tmp / "shim"
        self.shim.mkdir()
        (self.shim / "trusthub_bench_app.py").write_text(_APP_SHIM)
        make_world(self.world, args.evaluations)
        self.world_data = json.loads(self.world.read_text())
        self.sandbox: Process | None = None
        self.proxy: Process | None = None
        self.sandbox_url = ""
        self.proxy_url = ""
        with psql() as conn:
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        stat = _stat(backend)
        assert stat is not None
        self.postmaster = int(stat[1])

    # services

    def start_upstream(self) -> None:
        sandbox_port, proxy_port = free_port(), free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.sandbox = Process(
            [sys.executable, "-m", "trusthub_eval.sandbox", "--port", str(sandbox_port),
             "--world", str(self.world)],
            cwd=ROOT, env=env,
        )  # fmt: skip
        self.sandbox.wait_ready("the sandbox")
        self.proxy = Process(
            [sys.executable, "-m", "bench.proxy", "--listen", str(proxy_port),
             "--upstream", f"127.0.0.1:{sandbox_port}", "--delay", str(self.args.latency)],
            cwd=ROOT, env=env,
        )  # fmt: skip
        self.proxy.wait_ready("the latency proxy")
        self.sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        self.proxy_url = f"http://127.0.0.1:{proxy_port}"

    def sandbox_call(self, path: str, method: str = "GET") -> Any:
        import base64

        credentials = f"{self.world_data['account_sid']}:{self.world_data['auth_token']}"
        request = urllib.request.Request(  # noqa: S310 (the sandbox's http URL)
            self.sandbox_url + path,
            method=method,
            headers={"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return json.loads(response.read() or b"null")

    def env(self, side: Side, overrides: dict[str, Any] | None = None) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": f"{self.shim}:{side.checkout}",
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DATABASE_URL": side.database_url,
            "CELERY_BROKER_URL": REDIS_URL,
            "TRUSTHUB_BENCH_PREFIX": self.prefix,
            "TRUSTHUB_BENCH_SETTINGS": json.dumps(overrides or {}),
            "TRUSTHUB_BENCH_CELERY": json.dumps(self.args.celery),
            "TRUSTHUB_BASE_URL": self.proxy_url,
            "TRUSTHUB_SANDBOX_WORLD": str(self.world),
            "TRUSTHUB_VAR_DIR": str(self.tmp / f"var-{side.label}"),
            "PYTHONUNBUFFERED": "1",
        }

    def prepare(self, side: Side) -> None:
        with psql() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{side.database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{side.database}"')
        env = {**self.env(side), "TRUSTHUB_BASE_URL": self.sandbox_url}
        for command in (["migrate", "--verbosity", "0"], ["trusthub_sync"]):
            subprocess.run(
                [sys.executable, "manage.py", *command],
                cwd=side.checkout, env=env, check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip

    def drop(self, side: Side) -> None:
        with psql() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{side.database}" WITH (FORCE)')

    # the run

    def run(self, side: Side, config: Config) -> dict[str, Any]:
        assert self.sandbox is not None
        assert self.proxy is not None
        overrides: dict[str, Any] = {}
        limiter_key = None
        if config.cap:
            overrides = {"CONCURRENCY_LIMIT": config.cap, "CONCURRENCY_REDIS_URL": REDIS_URL}
            limiter_key = f"trusthub_eval:concurrency:{self.world_data['account_sid']}"
        env = self.env(side, overrides)
        command = [
            sys.executable, "-m", "celery", "-A", "trusthub_bench_app", "worker",
            "--pool", config.pool, "--concurrency", str(config.concurrency),
            "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        workers = [
            Process(
                [*command, "--hostname", f"bench-{side.label}-{index}@%h"],
                cwd=side.checkout,
                env=env,
            )
            for index in range(config.workers)
        ]
        try:
            for worker in workers:
                worker.wait_ready(f"a {config.pool} worker")
            time.sleep(2)  # the startup sweep each worker sends, and its pool's warm-up
            return self._measure(side, config, workers)
        finally:
            for worker in workers:
                worker.stop()
            self._leave_nothing(side, limiter_key)

    def _leave_nothing(self, side: Side, limiter_key: str | None) -> None:
        """After a configuration, even one that timed out: no message left for the next one's
        workers, no row in flight, no slot held."""
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
        if limiter_key:
            keys += [limiter_key, f"{limiter_key}:freed"]
        if keys:
            client.delete(*keys)
        client.close()
        with psql(side.database) as conn:
            conn.execute(
                "UPDATE trusthub_eval_evaluation SET state = 'failed' "
                "WHERE state IN ('queued', 'running')"
            )

    def _measure(self, side: Side, config: Config, workers: list[Process]) -> dict[str, Any]:
        assert self.sandbox is not None
        assert self.proxy is not None
        from celery import Celery

        app = Celery(broker=REDIS_URL)
        app.conf.broker_transport_options = {"global_keyprefix": self.prefix}
        n = self.args.evaluations
        self.sandbox_call("/_sandbox/reset", "POST")
        conn = psql(side.database)
        bench_backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        sampler = BackendSampler(self.postmaster, side.database, {bench_backend})
        log_lines = [len(w.lines) for w in workers]
        proxy_lines = len(self.proxy.lines)
        assert self.proxy.popen.stdin is not None
        self.proxy.popen.stdin.write("reset\n")
        self.proxy.popen.stdin.flush()
        others = {
            "sandbox": self.sandbox.pid,
            "proxy": self.proxy.pid,
            "redis": _redis_pid(),
        }
        before_others = {name: cpu_seconds(pid) for name, pid in others.items()}
        before_workers = sum(tree_cpu(w.pid) for w in workers)
        before_machine = machine_busy()
        before_self = time.process_time()
        sampler.start()
        started = time.time()
        ids = [
            row[0]
            for row in conn.execute(
                "INSERT INTO trusthub_eval_evaluation (customer_profile_id, policy_id, state,"
                " trigger, requested_at, attempts, error_message)"
                " SELECT id, policy_id, 'queued', 'schedule', now(), 0, ''"
                " FROM trusthub_eval_customerprofile WHERE policy_id IS NOT NULL"
                " ORDER BY id LIMIT %s RETURNING id",
                [n],
            ).fetchall()
        ]
        with app.producer_or_acquire() as producer:
            for evaluation_id in ids:
                app.send_task("trusthub_eval.run_evaluation", (evaluation_id,), producer=producer)
        deadline = time.monotonic() + self.args.timeout
        while True:
            active, completed, failed, last, attempts = conn.execute(
                "SELECT count(*) FILTER (WHERE state IN ('queued', 'running')),"
                " count(*) FILTER (WHERE state = 'completed'),"
                " count(*) FILTER (WHERE state = 'failed'),"
                " extract(epoch FROM max(completed_at)), sum(attempts)"
                " FROM trusthub_eval_evaluation WHERE id = ANY(%s)",
                [ids],
            ).fetchone()
            if not active or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        (claim_to_done,) = conn.execute(
            "SELECT 1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY"
            " extract(epoch FROM completed_at - started_at))"
            " FROM trusthub_eval_evaluation WHERE id = ANY(%s) AND state = 'completed'",
            [ids],
        ).fetchone()
        after_workers = sum(tree_cpu(w.pid) for w in workers)
        pg = sampler.stop()
        after_machine = machine_busy()
        after_self = time.process_time()
        after_others = {name: cpu_seconds(pid) for name, pid in others.items()}
        in_flight = [
            int(line.split()[1])
            for line in self.proxy.lines[proxy_lines:]
            if line.startswith("inflight ")
        ]
        round_trips = [
            float(line.split()[1])
            for line in self.proxy.lines[proxy_lines:]
            if line.startswith("rtt ")
        ]
        round_trip = statistics.median(round_trips) / 1000 if round_trips else self.args.latency
        posts = sum(
            1 for r in self.sandbox_call("/_sandbox/requests")["requests"] if r["method"] == "POST"
        )
        conn.close()
        elapsed = float(last or time.time()) - started
        ours = {
            "worker": after_workers - before_workers,
            "postgres": pg["cpu"],
            **{name: after_others[name] - before_others[name] for name in others},
            "bench": after_self - before_self,
        }
        total = sum(ours.values())
        machine = after_machine - before_machine
        cores = os.cpu_count() or 1
        connections = sum(1 for line in self.proxy.lines[proxy_lines:] if line.startswith("conn "))
        logged = sum(
            1
            for worker, start in zip(workers, log_lines, strict=True)
            for line in worker.lines[start:]
            if re.search(r"Evaluation EL[0-9a-f]{32} of BU", line)
        )
        latency_limit = config.slots / self.args.latency
        cpu_limit = cores * n / total
        # What the others left: the machine's CPU over the run minus what they used.
        left = max(cores * elapsed - max(machine - total, 0.0), 0.01)
        cpu_limit_left = left * n / total / elapsed
        throughput = n / elapsed
        return {
            "code": side.label,
            "config": config.name,
            "capped": bool(config.cap),
            "evaluations": n,
            "completed": completed,
            "failed": failed,
            "unfinished": active,
            "attempts": int(attempts or 0),
            "seconds": elapsed,
            "throughput": throughput,
            "latency_limit": latency_limit,
            "cpu_limit": cpu_limit,
            "cpu_limit_left": cpu_limit_left,
            "ratio": throughput / min(latency_limit, cpu_limit),
            "ratio_left": throughput / min(latency_limit, cpu_limit_left),
            # TrustHub's round trip as the proxy saw it: the added latency plus the sandbox's
            # own time; the throughput against the limit it sets (and the CPU limit).
            "round_trip_ms": round_trip * 1000,
            "ratio_round_trip": throughput / min(config.slots / round_trip, cpu_limit),
            "ms": {name: 1000 * value / n for name, value in ours.items()},
            "others_busy": max(machine - total, 0.0) / elapsed,
            "pg_backends_exited": pg["exited"],
            "pg_others_exited": pg["others_exited"],
            "pg_tail_seconds": pg["tail"],
            "connections": connections,
            "posts": posts,
            "max_in_flight": max(in_flight, default=0),
            # Median time from the claim to the stored answer: the round trip plus our work.
            "claim_to_done_ms": float(claim_to_done or 0),
            # The rest of each slot's cycle: the broker, the pool, the task's own overhead.
            "between_tasks_ms": 1000 * config.slots / throughput - float(claim_to_done or 0),
            "log_lines": logged / n,
        }

    def stop(self) -> None:
        for process in (self.proxy, self.sandbox):
            if process is not None:
                process.stop()
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        client.close()


def cap_overhead(bench: Bench, side: Side) -> dict[str, float]:
    """``bench/cap.py`` run with ``side``'s code against the sandbox (no added latency)."""
    world = bench.world_data
    command = [
        sys.executable, str(ROOT / "bench" / "cap.py"), "--base-url", bench.sandbox_url,
        "--account-sid", world["account_sid"], "--auth-token", world["auth_token"],
        "--profile", world["customer_profiles"][0]["sid"], "--redis", REDIS_URL,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(side.checkout)}
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out), code=side.label)


def _redis_pid() -> int:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


# --- report -----------------------------------------------------------------------------------


COLUMNS = [
    ("configuration", lambda r: r["config"], "<"),
    ("code", lambda r: r["code"], "<"),
    ("done", lambda r: f"{r['completed'] + r['failed']}/{r['evaluations']}", ">"),
    ("eval/s", lambda r: f"{r['throughput']:.1f}", ">"),
    ("latency limit", lambda r: f"{r['latency_limit']:.0f}", ">"),
    ("CPU limit", lambda r: f"{r['cpu_limit']:.0f}", ">"),
    ("ratio", lambda r: f"{r['ratio']:.2f}", ">"),
    ("ratio (left)", lambda r: f"{r['ratio_left']:.2f}", ">"),
    ("round trip ms", lambda r: f"{r.get('round_trip_ms', 0):.1f}", ">"),
    ("ratio (round trip)", lambda r: f"{r.get('ratio_round_trip', 0):.2f}", ">"),
    ("worker ms", lambda r: f"{r['ms']['worker']:.1f}", ">"),
    ("PG ms", lambda r: f"{r['ms']['postgres']:.1f}", ">"),
    ("worker+PG ms", lambda r: f"{r['ms']['worker'] + r['ms']['postgres']:.1f}", ">"),
    (
        "sandbox+proxy+redis ms",
        lambda r: f"{r['ms']['sandbox'] + r['ms']['proxy'] + r['ms']['redis']:.1f}",
        ">",
    ),
    ("others' CPUs", lambda r: f"{r['others_busy']:.2f}", ">"),
    ("TCP conns", lambda r: str(r["connections"]), ">"),
    ("POSTs", lambda r: str(r["posts"]), ">"),
    ("max in flight", lambda r: str(r["max_in_flight"]), ">"),
    ("claim→done ms", lambda r: f"{r['claim_to_done_ms']:.0f}", ">"),
    # Under a cap a slot also waits for a free one: its idle time says nothing then.
    ("slot idle ms", lambda r: "-" if r["capped"] else f"{r['between_tasks_ms']:.0f}", ">"),
    ("log lines/eval", lambda r: f"{r['log_lines']:.1f}", ">"),
]


def table(rows: list[dict[str, Any]]) -> str:
    cells = [[title for title, _, _ in COLUMNS]] + [[f(r) for _, f, _ in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = []
    for index, row in enumerate(cells):
        lines.append(
            "| "
            + " | ".join(
                cell.ljust(w) if align == "<" else cell.rjust(w)
                for cell, w, (_, _, align) in zip(row, widths, COLUMNS, strict=True)
            )
            + " |"
        )
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine_line() -> str:
    import platform

    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as file:
        model = next((line.split(":", 1)[1].strip() for line in file if "model name" in line), "")
    with psql() as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
    import celery
    import django

    return (
        f"machine: {model}, {os.cpu_count()} CPUs; PostgreSQL {version}; Python "
        f"{platform.python_version()}, Django {django.__version__}, Celery {celery.__version__}"
    )


def sides(codes: list[str], tmp: Path) -> list[Side]:
    """The code versions to run: "." is this checkout as it is on disk, anything else a commit,
    extracted to a temporary directory (so editing the checkout meanwhile changes nothing)."""
    run = secrets.token_hex(3)
    found = []
    for index, code in enumerate(codes):
        database = f"trusthub_bench_tp_{run}_{index}"
        if code == ".":
            described = subprocess.run(
                ["git", "describe", "--always", "--dirty"],
                cwd=ROOT,
                capture_output=True,
                text=True,
            ).stdout.strip()
            found.append(Side(described or "checkout", ROOT, database))
            continue
        commit = subprocess.run(
            ["git", "rev-parse", "--short", code], cwd=ROOT, check=True, capture_output=True,
            text=True,
        ).stdout.strip()  # fmt: skip
        found.append(Side(commit, extract(commit, tmp / f"code-{index}"), database))
    return found


def _setting(text: str) -> tuple[str, Any]:
    name, _, value = text.partition("=")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds added per answer")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"default: {DEFAULT_CONFIGS}")
    parser.add_argument(
        "--code",
        default=".",
        help="comma-separated commits to run, '.' for this checkout as it is (default)",
    )
    parser.add_argument("--compare", metavar="REV", help="the same as --code REV,.")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per configuration")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument(
        "--no-cap-overhead",
        dest="cap_overhead",
        action="store_false",
        help="skip measuring what the fleet-wide cap adds to a call",
    )
    parser.add_argument(
        "--celery",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a Celery setting for the workers, e.g. worker_prefetch_multiplier=4 (repeatable)",
    )
    args = parser.parse_args()
    args.celery = dict(_setting(text) for text in args.celery)
    codes = [args.compare, "."] if args.compare else args.code.split(",")
    # `kill <pid>` stops the run as Ctrl-C does: workers stopped, databases and keys removed.
    signal.signal(signal.SIGTERM, _interrupt)
    configs = [Config.parse(text) for text in args.configs.split(",") if text]
    skipped = []
    for pool in ("gevent", "eventlet"):
        try:
            __import__(pool)
        except ImportError:
            if any(c.pool == pool for c in configs):
                skipped.append(pool)
                configs = [c for c in configs if c.pool != pool]
    print(machine_line(), flush=True)
    for pool in skipped:
        print(f"skipping the {pool} pool: {pool} is not installed", flush=True)
    rows: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="trusthub-throughput-"))
    bench = Bench(args, tmp)
    began = time.monotonic()
    try:
        bench.start_upstream()
        versions = sides(codes, tmp)
        overheads = [cap_overhead(bench, side) for side in versions] if args.cap_overhead else []
        try:
            for side in versions:
                bench.prepare(side)
            for config in configs:
                for side in versions:
                    row = bench.run(side, config)
                    rows.append(row)
                    print(table([row]).splitlines()[-1], flush=True)
        finally:
            for side in versions:
                bench.drop(side)
    finally:
        bench.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(
        f"{args.evaluations} evaluations per row, TrustHub (the sandbox) {args.latency * 1000:.0f}"
        f" ms away; ms are CPU milliseconds per evaluation; run took "
        f"{time.monotonic() - began:.0f} s"
    )
    print(table(rows))
    print()
    for overhead in overheads:
        print(
            f"fleet-wide cap, {overhead['code']}: one call to the sandbox (no added latency)"
            f" {overhead['bare_ms']:.3f} ms without, {overhead['capped_ms']:.3f} ms with ="
            f" {overhead['overhead_ms']:.3f} ms per call; a slot taken and given back alone"
            f" {overhead['slot_ms']:.3f} ms"
        )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "cap_overhead": overheads}, indent=2))
    return 0 if all(r["unfinished"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
