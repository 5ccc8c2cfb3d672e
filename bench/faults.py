"""Fault benchmark: is an evaluation ever lost or duplicated under real faults?

    make bench-faults                                   # 1,000 evaluations, every scenario
    .venv/bin/python bench/faults.py --evaluations 200 --scenarios faults,redis-restart

Celery workers run as separate processes (``celery -A project worker``) on a private Redis and
a private PostgreSQL cluster, both started here on free ports of 127.0.0.1 and removed at the
end (the shared servers on 5432/6379 are never touched). TrustHub is the sandbox behind
bench/faultproxy.py, which breaks a share of every kind of request. Each scenario requests one
evaluation per record (Customer Profiles, every third a Trust Product), disturbs the system,
waits until every row is final (or until nothing has moved for --idle seconds, or the
deadline), then compares the database with the sandbox's own record of every evaluation it
created. docs/RELIABILITY.md explains the columns.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import copy
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dbstall import StallProxy  # noqa: E402
from bench.faultproxy import BROKEN_BODIES, KINDS, ODD_ANSWERS, FaultProxy, record_sid  # noqa: E402

SCENARIOS = {
    "faults": "faults only",
    "worker-kill": "a worker SIGKILLed mid-run (restarted 3 s later)",
    "postgres-restart": "PostgreSQL stopped mid-run for 5 s",
    "redis-restart": "Redis restarted mid-run (no persistence: its messages are gone)",
    "broker-down": "every request made while Redis is down, Redis started after",
    "clock-skew": "worker1's clock 10 min ahead, worker2's 3 min behind; 10 % of POSTs answered "
    "5 s late; worker1 SIGKILLed mid-run",
    "db-stall": "worker1's PostgreSQL connection black-holed for 60 s right after a claim, 3 times",
    "backlog": "--backlog evaluations (5,000) requested at once",
}
# "Mid-run": when this share of the rows is final.
DISRUPT_AT = 0.3

# clock-skew: each worker's clock (libfaketime's FAKETIME), in seconds for the notes.
CLOCK_SKEW = {"worker1": ("+10m", 600.0), "worker2": ("-3m", -180.0)}
# clock-skew: this share of the POSTs to /Evaluations is answered SLOW_DELAY s late; the workers'
# read timeout is raised above it, so a slow answer is an answer, not a timeout.
SLOW_RATE = 0.1
SLOW_DELAY = 5.0
# TRUSTHUB_EVAL keys a scenario sets for its workers (--setting still wins).
SCENARIO_SETTINGS: dict[str, dict[str, Any]] = {"clock-skew": {"READ_TIMEOUT": 8.0}}
# db-stall: STALLS stalls of worker1's database connections, each STALL_SECONDS long: the first
# when this share of the rows is final, each later one once the previous began and another
# STALL_NEXT of the rows became final since (so they may overlap, on different connections: a
# run is shorter than a stall).
STALL_SECONDS = 60.0
STALLS = 3
STALL_FIRST = 0.2
STALL_NEXT = 0.15
# The driver waits at least this long for a scenario (idle, deadline): a row a fast worker
# claimed looks fresh to the others for RUNNING_TIMEOUT plus the skew (13 min here).
PATIENCE = {"clock-skew": (900.0, 1200.0), "db-stall": (STALL_SECONDS + 30, 0.0)}
# backlog: seconds of deadline per evaluation, at least (5,000: 1,000 s).
BACKLOG_DEADLINE_PER_EVALUATION = 0.2
# Requests come from this many threads, like as many web processes; each waits ~0.6 s for
# Celery's publish retries while the broker is down.
REQUEST_THREADS = 16
TRIGGER = "schedule"

log = logging.getLogger("bench.faults")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--evaluations", type=int, default=1000, help="per scenario")
    parser.add_argument(
        "--backlog",
        type=int,
        default=5000,
        help="evaluations of the backlog scenario (at least --evaluations)",
    )
    parser.add_argument("--fault-rate", type=float, default=0.3, help="share of /v1 requests")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, from: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4, help="per worker")
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads"])
    parser.add_argument("--beat", action="store_true", help="also run `celery -A project beat`")
    parser.add_argument(
        "--idle",
        type=float,
        default=90.0,
        help="stop waiting when no row changed and no request reached TrustHub for this long "
        "(keep it above the longer of RUNNING_TIMEOUT and SWEEP_AFTER, plus SWEEP_INTERVAL)",
    )
    parser.add_argument(
        "--deadline", type=float, default=480.0, help="seconds after the last request"
    )
    parser.add_argument(
        "--faults", default=",".join(KINDS), help=f"kinds to inject: {', '.join(KINDS)}"
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="extra TRUSTHUB_EVAL setting for the workers, e.g. RUNNING_TIMEOUT=30",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path, help="also write the markdown table here")
    parser.add_argument("--keep", action="store_true", help="keep the databases' directory")
    args = parser.parse_args()
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.backlog = max(args.backlog, args.evaluations)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    if set(args.faults) - set(KINDS):
        parser.error(f"unknown fault kinds: {', '.join(sorted(set(args.faults) - set(KINDS)))}")
    args.extra_settings = {}
    for item in args.setting:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--setting {item!r}: expected KEY=VALUE")
        try:
            args.extra_settings[key] = json.loads(value)
        except ValueError:
            args.extra_settings[key] = value

    run_dir = ROOT / "var" / "bench-faults" / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    log.addHandler(console)
    log.setLevel(logging.INFO)
    log.propagate = False
    log.info("logs and results in %s", run_dir.relative_to(ROOT))
    started = time.monotonic()
    with Bench(args, run_dir) as bench:
        results = [bench.run_scenario(name) for name in args.scenarios]
    table = render(results, args, time.monotonic() - started)
    print("\n" + table)
    (run_dir / "results.md").write_text(table)
    (run_dir / "results.json").write_text(
        json.dumps([dataclasses.asdict(r) for r in results], indent=2, default=str)
    )
    if args.output:
        args.output.write_text(table)


# --- private servers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres_bindir() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if candidates:
        return candidates[-1]
    found = shutil.which("pg_ctl")
    if found is None:
        sys.exit("PostgreSQL's server binaries (initdb, pg_ctl) are needed.")
    return Path(found).resolve().parent


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free port of 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.bindir = _postgres_bindir()
        self.home = root / "postgres"
        self.data = self.home / "data"
        self.port = free_port()
        self.home.mkdir()
        # PostgreSQL refuses to run as root: use the postgres account, as its packages do.
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.home, "postgres", "postgres")

    def _run(self, *command: str, check: bool = True) -> None:
        argv = [str(self.bindir / command[0]), *command[1:]]
        if self.as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=check, capture_output=True, cwd=self.home)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        self.start()

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.home / "log"), "-o", options, "-w",
            "start",
        )  # fmt: skip

    def stop(self, *, check: bool = True) -> None:
        # -m fast: connections are cut, as on a restart in production.
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=check)

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')


class PrivateRedis:
    """A throwaway redis-server on a free port of 127.0.0.1, without persistence (like ours)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "redis"
        self.dir.mkdir()
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(self.dir / "log")],
            start_new_session=True,
        )  # fmt: skip
        until(self._answers, 10, "redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def flush(self) -> None:
        import redis

        redis.Redis.from_url(self.url).flushall()


def until(predicate: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(message)
        time.sleep(0.2)


def libfaketime() -> Path:
    """Debian's libfaketime (package ``faketime``)."""
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    if not found:
        sys.exit("The clock-skew scenario needs libfaketime (Debian's `faketime` package).")
    return found[0]


def skewed_env(offset: str) -> dict[str, str]:
    """Environment that runs a process, and the processes it forks, with its wall clock moved
    by ``offset`` (libfaketime, e.g. ``+10m``); monotonic clocks stay real. bench/faketime/
    comes first on the path: its sitecustomize mends ``time.sleep``, which libfaketime breaks."""
    preload = " ".join(filter(None, [str(libfaketime()), os.environ.get("LD_PRELOAD")]))
    path = os.pathsep.join(
        filter(None, [str(ROOT / "bench" / "faketime"), os.environ.get("PYTHONPATH")])
    )
    return {
        "LD_PRELOAD": preload,
        "FAKETIME": offset,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_DONT_RESET": "1",
        "PYTHONPATH": path,
    }


_CLOCK_CHECK = """
import os, time
read, write = os.pipe()
if os.fork() == 0:
    started = time.monotonic()
    time.sleep(0.2)
    slept = time.monotonic() - started
    os.write(write, f"{time.time()!r} {slept!r}".encode())
    os._exit(0)
os.wait()
print(os.read(read, 100).decode())
"""


def clock_offset(env: dict[str, str]) -> float:
    """How far ahead of ours the wall clock of a forked child of a process with ``env`` is
    (checking that its ``time.sleep`` and monotonic clock work as they should)."""
    output = subprocess.run(
        [sys.executable, "-c", _CLOCK_CHECK], env=env, capture_output=True, check=True, text=True
    ).stdout
    ours = time.time()  # a few milliseconds after the child's reading
    theirs, slept = (float(value) for value in output.split())
    if not 0.15 < slept < 1.0:
        raise RuntimeError(f"time.sleep(0.2) took {slept:.2f} s under libfaketime")
    return theirs - ours


class Workers:
    """``celery -A project worker`` processes, each in its own process group.

    ``env_of`` gives a worker, by name, environment variables of its own (a restart keeps them).
    """

    def __init__(
        self,
        args: argparse.Namespace,
        env: dict[str, str],
        log_dir: Path,
        env_of: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.args = args
        self.env = env
        self.env_of = env_of or {}
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.starts = 0

    def start(self) -> None:
        for index in range(1, self.args.workers + 1):
            self.start_one(f"worker{index}")
        if self.args.beat:
            self._spawn("beat", ["beat", "-l", "INFO", "-s", str(self.log_dir / "beat-schedule")])

    def start_one(self, name: str) -> None:
        command = [
            "worker", "-P", self.args.pool, "-c", str(self.args.concurrency), "-n",
            f"{name}@%h", "-l", "INFO",
        ]  # fmt: skip
        log_file = self._spawn(name, command)
        until(lambda: b" ready." in log_file.read_bytes(), 90, f"{name} did not start")

    def _spawn(self, name: str, command: list[str]) -> Path:
        self.starts += 1
        log_file = self.log_dir / f"{name}.{self.starts}.log"
        with log_file.open("wb") as out:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "project", *command],
                cwd=ROOT,
                env={**self.env, **self.env_of.get(name, {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return log_file

    def kill(self, name: str) -> None:
        """SIGKILL the worker and its pool processes at once, as the OOM killer would."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()


# --- the sandbox's world -----------------------------------------------------------------------


#: Every TRUST_PRODUCT_EVERY-th record of the bench's world is a Trust Product, built on the
#: profile made just before it; the others are Customer Profiles.
TRUST_PRODUCT_EVERY = 3


def write_world(path: Path, records: int, seed: int) -> dict[str, Any]:
    """A world of ``records`` records: copies of the packaged Customer Profiles and, every
    TRUST_PRODUCT_EVERY-th, of its Trust Products (a third of each incomplete). ``world["order"]``
    lists them as (kind, SID) in the order the scenarios request them (the sandbox ignores it)."""
    from trusthub_eval.sandbox.world import DEFAULT_WORLD_PATH

    base = json.loads(DEFAULT_WORLD_PATH.read_text())
    rng = random.Random(seed)
    profiles: list[dict[str, Any]] = []
    products: list[dict[str, Any]] = []
    order: list[tuple[str, str]] = []
    for index in range(records):
        digest = hashlib.sha256(f"bench-faults-{seed}-{index}".encode()).hexdigest()
        if index % TRUST_PRODUCT_EVERY == TRUST_PRODUCT_EVERY - 1:
            kind, made = "trust-product", base["trust_products"]
        else:
            kind, made = "customer-profile", base["customer_profiles"]
        record = copy.deepcopy(made[index % len(made)])
        record["sid"] = "BU" + digest[:32]
        record["friendly_name"] = f"Fault bench {index:05d}"
        if kind == "trust-product":
            for assigned in record.get("supporting_customer_profiles") or []:
                assigned["sid"] = profiles[-1]["sid"]
        end_users = record.get("end_users") or []
        if end_users and rng.random() < 0.3:
            attributes = rng.choice(end_users).get("attributes") or {}
            if attributes:
                attributes.pop(rng.choice(sorted(attributes)))
        (products if kind == "trust-product" else profiles).append(record)
        order.append((kind, record["sid"]))
    world = {key: base[key] for key in ("account_sid", "auth_token", "policies")}
    world["customer_profiles"] = profiles
    world["trust_products"] = products
    path.write_text(json.dumps(world))
    return {**world, "order": order}


# --- one run -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    scenario: str
    requested: int
    total: int = 0
    completed: int = 0
    failed: int = 0
    active: int = 0
    duplicate_sids: int = 0
    created_unrecorded: int = 0
    failed_but_created: int = 0
    completed_wrong: int = 0
    # Rows whose error text or stored answer holds the credentials (or their basic-auth form),
    # and rows (with their requirement results) that cannot be read back whole.
    secrets_stored: int = 0
    unreadable: int = 0
    posts: int = 0
    gets: int = 0
    created_upstream: int = 0
    final_after: float | None = None
    ended: str = ""
    disruption: str = ""
    request_seconds: float = 0.0
    faults: dict[str, int] = dataclasses.field(default_factory=dict)
    # The longest any one claim (evaluation id, started_at) was seen running, first to last poll;
    # and the goal: RUNNING_TIMEOUT plus one SWEEP_INTERVAL.
    longest_running: float = 0.0
    running_limit: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)
    # For results.json: each unrecorded evaluation with its record's rows, to trace the cause.
    unrecorded: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace, run_dir: Path) -> None:
        self.args = args
        self.run_dir = run_dir
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> Bench:
        try:
            self._setup()
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stack.close()

    def _setup(self) -> None:
        args = self.args
        scratch = Path(tempfile.mkdtemp(prefix="trusthub-faults-"))
        scratch.chmod(0o755)
        if not args.keep:
            self.stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        self.postgres = PrivatePostgres(scratch)
        self.postgres.init()
        self.stack.callback(self.postgres.stop, check=False)
        log.info("private PostgreSQL on 127.0.0.1:%s", self.postgres.port)
        self.postgres.create_database("trusthub_faults")
        self.redis = PrivateRedis(scratch)
        self.redis.start()
        self.stack.callback(self.redis.stop)
        log.info("private Redis on 127.0.0.1:%s", self.redis.port)

        world_path = scratch / "world.json"
        # One record per evaluation of the biggest scenario; a scenario uses the first ones.
        size = max(self.requested(name) for name in args.scenarios)
        self.world = write_world(world_path, size, args.seed)
        from trusthub_eval.sandbox import SandboxServer

        self.sandbox = SandboxServer(world_path).start()
        self.stack.callback(self.sandbox.stop)
        self.proxy = FaultProxy(
            self.sandbox.url,
            fault_rate=args.fault_rate,
            kinds=args.faults,
            broken_bodies=BROKEN_BODIES,
            odd_answers=ODD_ANSWERS,
            # Past the workers' read timeout (bench/settings.py: 2 s).
            stall=3.0,
            seed=args.seed,
            # Far above what a sane run needs (a few requests per evaluation): bounds a runaway.
            max_requests=50 * args.evaluations,
        ).start()
        self.stack.callback(self.proxy.stop)
        # Between worker1 and PostgreSQL in the db-stall scenario; idle otherwise.
        self.db_proxy = StallProxy("127.0.0.1", self.postgres.port, stall=STALL_SECONDS).start()
        self.stack.callback(self.db_proxy.stop)

        env = {k: v for k, v in os.environ.items() if not k.startswith("TWILIO_")}
        env.update(
            DJANGO_SETTINGS_MODULE="bench.settings",
            DATABASE_URL=self.postgres.url("trusthub_faults"),
            CELERY_BROKER_URL=self.redis.url,
            TRUSTHUB_BASE_URL=self.proxy.url,
            TRUSTHUB_SANDBOX_WORLD=str(world_path),
            TRUSTHUB_VAR_DIR=str(scratch / "var"),
            BENCH_TRUSTHUB_EVAL=json.dumps(args.extra_settings),
            PYTHONUNBUFFERED="1",
        )
        env.pop("TRUSTHUB_DEFAULT_POLICY_SID", None)
        self.env = env
        os.environ.update(env)
        for key in [k for k in os.environ if k.startswith("TWILIO_")]:
            del os.environ[key]
        self._setup_django()

    def _setup_django(self) -> None:
        import django

        django.setup()
        import project.celery  # noqa: F401  (the app request_evaluation sends through)

        # The app's log in this process (e.g. a send that failed while the broker was down)
        # goes to a file; the console shows the bench's progress only.
        handler = logging.FileHandler(self.run_dir / "driver.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logging.getLogger().handlers = [handler]
        for name in ("django", "trusthub_eval", "celery", "kombu"):
            logging.getLogger(name).handlers = [handler]
            logging.getLogger(name).propagate = False
        from django.core.management import call_command

        from trusthub_eval.models import CustomerProfile, Policy, TrustProduct

        call_command("migrate", verbosity=0)
        policies = {
            raw["sid"]: Policy.objects.create(sid=raw["sid"], friendly_name=raw["friendly_name"])
            for raw in self.world["policies"]
        }
        records = {CustomerProfile: "customer_profiles", TrustProduct: "trust_products"}
        for model, key in records.items():
            model.objects.bulk_create(
                model(
                    sid=raw["sid"],
                    friendly_name=raw["friendly_name"],
                    policy=policies[raw["policy_sid"]],
                )
                for raw in self.world[key]
            )

    # --- a scenario ----------------------------------------------------------------------------

    def requested(self, name: str) -> int:
        return self.args.backlog if name == "backlog" else self.args.evaluations

    def settings_of(self, name: str) -> dict[str, Any]:
        """The TRUSTHUB_EVAL keys the scenario's workers get on top of bench/settings.py."""
        return {**SCENARIO_SETTINGS.get(name, {}), **self.args.extra_settings}

    def run_scenario(self, name: str) -> Result:
        from django.conf import settings
        from django.db import connection

        from trusthub_eval.models import Evaluation

        log.info("== %s: %s", name, SCENARIOS[name])
        result = Result(scenario=name, requested=self.requested(name))
        effective = {**settings.TRUSTHUB_EVAL, **self.settings_of(name)}
        result.running_limit = float(effective["RUNNING_TIMEOUT"]) + float(
            effective["SWEEP_INTERVAL"]
        )
        log_dir = self.run_dir / name
        log_dir.mkdir()
        Evaluation.objects.all().delete()
        self.redis.flush()
        self.sandbox.reset()
        self.proxy.reset()
        self.proxy.slow_rate = SLOW_RATE if name == "clock-skew" else 0.0
        self.proxy.slow_delay = SLOW_DELAY
        # Far above what a sane run needs (a few requests per evaluation): bounds a runaway.
        self.proxy.max_requests = 50 * result.requested
        self.db_proxy.reset()
        env = {**self.env, "BENCH_TRUSTHUB_EVAL": json.dumps(self.settings_of(name))}
        env_of: dict[str, dict[str, str]] = {}
        self.skews: dict[str, float] = {}
        if name == "clock-skew":
            checked = []
            for worker, (offset, seconds) in CLOCK_SKEW.items():
                env_of[worker] = skewed_env(offset)
                self.skews[worker] = seconds
                measured = clock_offset({**env, **env_of[worker]})
                checked.append(f"{worker} {measured:+.0f} s")
                if abs(measured - seconds) > 5:
                    raise RuntimeError(f"libfaketime did not skew {worker}: {measured:+.1f} s")
            result.notes.append(
                "clocks, as a forked child of each worker's environment reads them: "
                + ", ".join(checked)
            )
        if name == "db-stall":
            env_of["worker1"] = {
                "DATABASE_URL": f"postgres://postgres@127.0.0.1:{self.db_proxy.port}/trusthub_faults"
            }
        workers = Workers(self.args, env, log_dir, env_of)
        try:
            workers.start()
            records = self.records(result.requested)
            kinds = collections.Counter(record.kind.label for record in records)
            result.notes.append(
                "requested: " + ", ".join(f"{n:,} of {kind}s" for kind, n in sorted(kinds.items()))
            )
            if name == "broker-down":
                self.redis.stop()
                result.disruption = "Redis stopped before the requests"
            t0 = time.monotonic()
            created, errors = self._request(records)
            last_request = time.monotonic()
            result.request_seconds = last_request - t0
            if len(created) != len(records):
                result.notes.append(f"{len(records) - len(created)} requests made no new row")
            result.notes += [f"request_evaluation raised {n}x {what}" for what, n in errors.items()]
            if name == "broker-down":
                self.redis.start()
                result.disruption += f", started {last_request - t0:.0f} s later"
            log.info("%d requested in %.1fs", len(created), last_request - t0)
            self._wait(name, result, workers, last_request)
        finally:
            workers.stop()
            connection.close()
        with (log_dir / "requests.jsonl").open("w") as out:
            out.writelines(json.dumps(entry) + "\n" for entry in self.proxy.log)
        self._measure(result)
        result.notes += worker_log_notes(log_dir, self.skews, result.requested)
        log.info(
            "%s: %d completed, %d failed, %d active; %d unrecorded, %d failed-but-created",
            name, result.completed, result.failed, result.active, result.created_unrecorded,
            result.failed_but_created,
        )  # fmt: skip
        return result

    def records(self, count: int) -> list[Any]:
        """The first ``count`` records of the world, profiles and Trust Products mixed."""
        from trusthub_eval.kinds import RecordKind
        from trusthub_eval.models import RECORD_MODELS

        wanted = self.world["order"][:count]
        found = {
            record.sid: record
            for kind in RecordKind
            for record in RECORD_MODELS[kind]
            .objects.select_related("policy")
            .filter(sid__in=[sid for k, sid in wanted if k == kind])
        }
        return [found[sid] for _kind, sid in wanted]

    def _request(self, records: list[Any]) -> tuple[list[int], collections.Counter[str]]:
        """request_evaluation() for each record, from threads like several web processes.

        Returns the new rows' ids and the errors raised, by type and message (a version may
        refuse requests while the broker is down: that is counted, not fatal).
        """
        from django.db import connection

        from trusthub_eval.services import request_evaluation

        created: list[int] = []
        errors: collections.Counter[str] = collections.Counter()
        lock = threading.Lock()

        def work(chunk: list[Any]) -> None:
            try:
                for record in chunk:
                    try:
                        evaluation, is_new = request_evaluation(record, trigger=TRIGGER)
                    except Exception as error:  # noqa: BLE001 (counted and reported)
                        with lock:
                            errors[f"{type(error).__name__}: {str(error)[:80]}"] += 1
                        continue
                    if is_new:
                        with lock:
                            created.append(evaluation.pk)
            finally:
                connection.close()

        threads = [
            threading.Thread(target=work, args=(records[i::REQUEST_THREADS],))
            for i in range(REQUEST_THREADS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return created, errors

    def _disrupt(self, name: str, workers: Workers) -> str:
        if name == "worker-kill":
            workers.kill("worker1")
            time.sleep(3)
            workers.start_one("worker1")
            return "worker1 SIGKILLed, restarted 3 s later"
        if name == "clock-skew":
            workers.kill("worker1")
            time.sleep(3)
            workers.start_one("worker1")
            return "worker1 (clock 10 min ahead) SIGKILLed, restarted 3 s later with the same clock"
        if name == "postgres-restart":
            self.postgres.stop()
            time.sleep(5)
            self.postgres.start()
            return "PostgreSQL stopped (-m fast), started 5 s later"
        if name == "redis-restart":
            self.redis.stop()
            time.sleep(5)
            self.redis.start()
            return "Redis stopped, started empty 5 s later"
        return ""

    def _wait(self, name: str, result: Result, workers: Workers, last_request: float) -> None:
        """Poll until every row is final, nothing moves for --idle seconds, or the deadline."""
        args = self.args
        least_idle, least_deadline = PATIENCE.get(name, (0.0, 0.0))
        if name == "backlog":
            least_deadline = BACKLOG_DEADLINE_PER_EVALUATION * result.requested
        idle, deadline = max(args.idle, least_idle), max(args.deadline, least_deadline)
        pending = name in ("worker-kill", "postgres-restart", "redis-restart", "clock-skew")
        last_signature: tuple[Any, ...] = ()
        last_change = time.monotonic()
        # Each claim seen running: (evaluation id, started_at) -> first and last poll it was seen.
        running: dict[tuple[int, Any], list[float]] = {}
        stalls_armed_at: list[int] = []  # db-stall: rows final when each stall was armed
        while True:
            now = time.monotonic()
            counts = self._counts(running, now)
            if counts is None:  # the database is restarting under us
                time.sleep(1)
                continue
            final = counts["completed"] + counts["failed"]
            if pending and (final >= DISRUPT_AT * result.requested or now - last_change > 10):
                log.info("%s at %d final", name, final)
                result.disruption = self._disrupt(name, workers) + f" (at {final} final)"
                pending = False
                last_change = time.monotonic()
                continue
            active = counts["queued"] + counts["running"]
            if name == "db-stall":
                self._arm_stall(final, active, result.requested, stalls_armed_at)
            if active == 0 and not pending and result.final_after is None:
                result.final_after = round(now - last_request, 1)
                result.ended = "all final"
            if active == 0 and not pending and not self._stall_unfinished():
                break
            signature = (*counts.values(), self.proxy.total_requests)
            if signature != last_signature:
                last_signature, last_change = signature, now
            if now - last_change > idle:
                result.ended = f"nothing moved for {idle:.0f} s"
                break
            if now - last_request > deadline:
                result.ended = f"deadline ({deadline:.0f} s)"
                break
            if self.proxy.capped:
                result.ended = "request cap reached"
                break
            time.sleep(1)
        spans = [last - first for first, last in running.values()]
        result.longest_running = round(max(spans, default=0.0), 1)
        beyond = sum(1 for span in spans if span > result.running_limit)
        if beyond:
            result.notes.append(
                f"{_claims(beyond)} seen running longer than {result.running_limit:.0f} s "
                "(RUNNING_TIMEOUT + SWEEP_INTERVAL)"
            )
        if name == "db-stall":
            self.db_proxy.disarm()
            stalls = self.db_proxy.stalls
            result.disruption = (
                f"worker1's database connection stalled {len(stalls)}x for "
                f"{STALL_SECONDS:.0f} s right after a claim (armed at "
                + ", ".join(f"{n} final" for n in stalls_armed_at)
                + "; the claims of "
                + ", ".join(f"#{stall.evaluation}" for stall in stalls)
                + f"; {self.db_proxy.claims} claims went through its proxy)"
            )

    def _arm_stall(self, final: int, active: int, requested: int, armed_at: list[int]) -> None:
        """db-stall: arm the next stall of worker1's database connection when it is due (never
        once every row is final: a claim of a finished row changes nothing)."""
        if active == 0:
            self.db_proxy.disarm()
            return
        if len(armed_at) >= STALLS or self.db_proxy.armed:
            return
        due = STALL_FIRST * requested if not armed_at else armed_at[-1] + STALL_NEXT * requested
        if final >= due:
            log.info("db-stall: stall %d armed at %d final", len(armed_at) + 1, final)
            self.db_proxy.arm()
            armed_at.append(final)

    def _stall_unfinished(self) -> bool:
        """A stall under way, or one that ended less than 10 s ago: the stalled attempt may
        still send its POST. (An armed stall that no claim triggered does not count.)"""
        return any(
            stall.ended is None or time.time() - stall.ended < 10 for stall in self.db_proxy.stalls
        )

    def _counts(
        self, running: dict[tuple[int, Any], list[float]], now: float
    ) -> dict[str, int] | None:
        """Rows per state and their attempts; records each claim seen running in ``running``."""
        from django.db import DatabaseError, connection
        from django.db.models import Count, Sum

        from trusthub_eval.models import Evaluation

        try:
            states = dict(
                Evaluation.objects.order_by()
                .values_list("state")
                .annotate(n=Count("id"))
                .values_list("state", "n")
            )
            attempts = Evaluation.objects.aggregate(n=Sum("attempts"))["n"] or 0
            claims = list(
                Evaluation.objects.filter(state=Evaluation.State.RUNNING).values_list(
                    "id", "started_at"
                )
            )
        except DatabaseError:
            connection.close()
            return None
        for claim in claims:
            running.setdefault(claim, [now, now])[1] = now
        counts = {state: states.get(state, 0) for state in Evaluation.State.values}
        counts["attempts"] = attempts
        return counts

    # --- comparing with TrustHub's record ------------------------------------------------------

    def _sandbox_evaluations(self, records: int) -> list[dict[str, Any]]:
        """Every evaluation the sandbox holds for the first ``records`` records (those the
        scenario requested), read from its own list API (no proxy)."""
        import requests

        from trusthub_eval.kinds import RecordKind

        items: list[dict[str, Any]] = []
        with requests.Session() as session:
            session.auth = (self.sandbox.account_sid, self.sandbox.auth_token)
            for kind, sid in self.world["order"][:records]:
                path = RecordKind(kind).path
                url: str | None = f"{self.sandbox.url}/v1/{path}/{sid}/Evaluations?PageSize=1000"
                while url:
                    page = session.get(url, timeout=30)
                    page.raise_for_status()
                    body = page.json()
                    items.extend(body["results"])
                    url = body["meta"]["next_page_url"]
        return items

    def _measure(self, result: Result) -> None:
        from trusthub_eval.models import Evaluation

        upstream = {item["sid"]: item for item in self._sandbox_evaluations(result.requested)}
        proxied = {created.sid for created in self.proxy.created}
        if proxied != set(upstream):
            result.notes.append(
                f"the proxy saw {len(proxied)} creations, the sandbox holds {len(upstream)}"
            )
        rows = list(
            Evaluation.objects.values(
                "id", "sid", "state", "status", "attempts", "requested_at", "completed_at",
                "posted_at", "error_code", "error_message", "customer_profile__sid",
                "trust_product__sid", "policy__sid",
            )
        )  # fmt: skip
        for row in rows:
            product, profile = row.pop("trust_product__sid"), row.pop("customer_profile__sid")
            row["record_sid"] = product or profile
        held = collections.Counter(row["sid"] for row in rows if row["sid"])
        by_pair: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
        for item in upstream.values():
            by_pair[record_sid(item), item["policy_sid"]].append(item)
        completed_ids = [row["id"] for row in rows if row["state"] == "completed"]
        passed = self._stored_passed_flags(completed_ids)

        result.total = len(rows)
        states = collections.Counter(row["state"] for row in rows)
        result.completed, result.failed = states["completed"], states["failed"]
        result.active = states["queued"] + states["running"]
        result.duplicate_sids = sum(1 for count in held.values() if count > 1)
        result.created_upstream = len(upstream)
        result.created_unrecorded = sum(1 for sid in upstream if sid not in held)
        for row in rows:
            pair = (row["record_sid"], row["policy__sid"])
            if row["state"] == "failed":
                since = row["requested_at"].replace(microsecond=0)
                if any(
                    item["sid"] not in held and _date(item["date_created"]) >= since
                    for item in by_pair[pair]
                ):
                    result.failed_but_created += 1
            elif row["state"] == "completed":
                item = upstream.get(row["sid"] or "")
                wrong = (
                    item is None
                    or (record_sid(item), item["policy_sid"]) != pair
                    or item["status"] != row["status"]
                    or (
                        passed is not None
                        and passed.get(row["id"]) != [bool(r["passed"]) for r in item["results"]]
                    )
                )
                result.completed_wrong += wrong
        result.secrets_stored, result.unreadable = self._check_readback([row["id"] for row in rows])
        counts = self.proxy.counts
        result.posts = counts.get("route:POST evaluations", 0)
        result.gets = counts.get("route:GET evaluations", 0)
        result.faults = {k[6:]: v for k, v in sorted(counts.items()) if k.startswith("fault:")}
        stuck = collections.Counter(
            f"{row['state']}: {(row['error_message'] or '(no error message)')[:90]}"
            for row in rows
            if row["state"] in ("queued", "running")
        )
        gave_up = collections.Counter(
            (row["error_message"] or "(no error message)")[:90]
            for row in rows
            if row["state"] == "failed"
        )
        shown_for = {created.sid: created.fault for created in self.proxy.created}
        rows_of: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for row in rows:
            rows_of[row["record_sid"]].append(row)
        result.unrecorded = [
            {
                "sid": item["sid"],
                "date_created": item["date_created"],
                "shown": shown_for.get(item["sid"]),
                "rows": rows_of[record_sid(item)],
            }
            for item in upstream.values()
            if item["sid"] not in held
        ]
        shown = collections.Counter(
            created.fault or "a clean 201"
            for created in self.proxy.created
            if created.sid not in held
        )
        if shown:
            result.notes.append(
                "created-but-unrecorded, by what the worker was shown for that POST: "
                + ", ".join(f"{what} {n}" for what, n in shown.most_common())
            )
        result.notes += [f"still active: {_rows(n)}, {what}" for what, n in stuck.most_common(6)]
        result.notes += [f"failed: {_rows(n)}, {what}" for what, n in gave_up.most_common(4)]

    def _check_readback(self, ids: list[int]) -> tuple[int, int]:
        """(rows holding a secret, rows that cannot be read back), each row read on its own
        with every field, its answer written as JSON again, and its requirement results."""
        from trusthub_eval.models import Evaluation, RequirementResult

        pair = f"{self.sandbox.account_sid}:{self.sandbox.auth_token}".encode()
        secrets = (self.sandbox.auth_token, base64.b64encode(pair).decode())
        holding = unreadable = 0
        for pk in ids:
            try:
                row = Evaluation.objects.filter(pk=pk).values().get()
                text = row["error_message"] + json.dumps(row["raw"])
                results = list(RequirementResult.objects.filter(evaluation_id=pk).values())
                json.dumps(results, default=str)
            except Exception:  # noqa: BLE001 (counted: whatever a page would meet)
                unreadable += 1
                continue
            holding += any(secret in text for secret in secrets)
        return holding, unreadable

    @staticmethod
    def _stored_passed_flags(ids: list[int]) -> dict[int, list[bool]] | None:
        """Per completed row, its requirements' passed flags in order; None if not stored."""
        from django.core.exceptions import FieldDoesNotExist

        from trusthub_eval.models import Evaluation

        try:
            relation = Evaluation._meta.get_field("requirement_results")
        except FieldDoesNotExist:
            return None
        model = relation.related_model
        flags: dict[int, list[bool]] = {i: [] for i in ids}
        for evaluation_id, flag in (
            model.objects.filter(evaluation_id__in=ids)
            .order_by("evaluation_id", "position")
            .values_list("evaluation_id", "passed")
        ):
            flags[evaluation_id].append(bool(flag))
        return flags


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _claims(count: int) -> str:
    return f"{count} claim" if count == 1 else f"{count} claims"


def _date(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- the workers' logs ------------------------------------------------------------------------

# Celery's and the app's format: "[2026-11-29 10:00:00,123: INFO/MainProcess] message".
_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): (\w+)/[^\]]*\] (.*)")
_SENT = re.compile(r"Bench: sent trusthub_eval\.resume_queued\[([^\]]+)\]")
_RECEIVED = re.compile(r"Task ([\w.]+)\[([^\]]+)\] received")
_SUCCEEDED = re.compile(r"Task ([\w.]+)\[([^\]]+)\] succeeded in ([\d.]+)s: (.*)")
_RESENT = re.compile(r"Sweep: sending (\d+) evaluation")
_NUMBERS = re.compile(r"#\d+|\[[0-9a-f-]{36}\]|\d+(\.\d+)?")
SWEEP_TASK = "trusthub_eval.resume_queued"
RUN_TASK = "trusthub_eval.run_evaluation"


def worker_log_notes(log_dir: Path, skews: dict[str, float], requested: int) -> list[str]:
    """What the workers' logs say: ERROR lines and tracebacks; when each sweep task ran after it
    was sent and what it re-sent; how many deliveries of run_evaluation found nothing to do.

    ``skews``: each worker's clock offset (clock-skew), taken off its log's times.
    """
    errors: collections.Counter[str] = collections.Counter()
    tracebacks = 0
    sent: dict[str, float] = {}
    started: dict[str, float] = {}
    resent: list[int] = []
    deliveries = 0
    outcomes: collections.Counter[str] = collections.Counter()
    longest_skipped = 0.0
    for path in sorted(log_dir.glob("*.log")):
        skew = skews.get(path.name.split(".")[0], 0.0)
        for line in path.read_text(errors="replace").splitlines():
            tracebacks += "Traceback (most recent call last)" in line
            match = _LINE.match(line)
            if match is None:
                continue
            stamp, millis, level, message = match.groups()
            at = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
            at -= skew
            if level in ("ERROR", "CRITICAL"):
                errors[_NUMBERS.sub("N", message)[:100]] += 1
            if found := _SENT.search(message):
                sent[found[1]] = at
            elif found := _RECEIVED.search(message):
                deliveries += found[1] == RUN_TASK
            elif found := _SUCCEEDED.search(message):
                task, task_id, runtime, value = found.groups()
                if task == SWEEP_TASK:
                    started[task_id] = at - float(runtime)
                elif task == RUN_TASK:
                    value = value.strip("'")
                    outcomes[value] += 1
                    if value == "skipped":
                        longest_skipped = max(longest_skipped, float(runtime))
            elif found := _RESENT.search(message):
                resent.append(int(found[1]))
    notes = [
        f"worker logs: {errors.total()} ERROR lines, {tracebacks} tracebacks"
        + (
            "; most common ERROR: "
            + "; ".join(f"{message} ({n})" for message, n in errors.most_common(3))
            if errors
            else ""
        )
    ]
    waits = sorted(started[task_id] - at for task_id, at in sent.items() if task_id in started)
    sweep = f"sweep: {len(sent)} sent, {len(waits)} ran"
    if waits:
        sweep += (
            f", from send to start median {waits[len(waits) // 2]:.1f} s, max {waits[-1]:.1f} s"
        )
    sweep += (
        f"; {len(resent)} sweeps re-sent {sum(resent):,} evaluations in all (most at once: "
        f"{max(resent):,})"
        if resent
        else "; none re-sent anything"
    )
    notes.append(sweep)
    notes.append(
        f"run_evaluation: {deliveries:,} deliveries ({deliveries / max(requested, 1):.2f} per "
        f"evaluation); returned: "
        + ", ".join(f"{value} {n:,}" for value, n in outcomes.most_common())
        + (f"; the longest 'skipped' took {longest_skipped:.1f} s" if outcomes["skipped"] else "")
    )
    return notes


# --- the table ---------------------------------------------------------------------------------

COLUMNS = [
    ("scenario", lambda r: f"`{r.scenario}`"),
    ("total", lambda r: f"{r.total:,}"),
    ("completed", lambda r: f"{r.completed:,}"),
    ("failed", lambda r: f"{r.failed:,}"),
    ("still active", lambda r: f"**{r.active}**" if r.active else "0"),
    ("duplicate SIDs", lambda r: _bold(r.duplicate_sids)),
    ("created-but-unrecorded", lambda r: _bold(r.created_unrecorded)),
    ("failed-but-created", lambda r: _bold(r.failed_but_created)),
    ("completed-but-wrong", lambda r: _bold(r.completed_wrong)),
    ("secrets stored", lambda r: _bold(r.secrets_stored)),
    ("unreadable rows", lambda r: _bold(r.unreadable)),
    ("POSTs/eval", lambda r: f"{r.posts / r.total:.2f}" if r.total else "-"),
    ("GETs/eval", lambda r: f"{r.gets / r.total:.2f}" if r.total else "-"),
    (
        "s until all final",
        lambda r: f"{r.final_after:.0f}" if r.final_after is not None else f"never ({r.ended})",
    ),
    (
        "longest running (s)",
        lambda r: (
            f"**{r.longest_running:.0f}**"
            if r.longest_running > r.running_limit
            else f"{r.longest_running:.0f}"
        ),
    ),
]


def _bold(value: int) -> str:
    return f"**{value}**" if value else "0"


def render(results: list[Result], args: argparse.Namespace, seconds: float) -> str:
    backlog = f" (`backlog`: {args.backlog:,})" if "backlog" in args.scenarios else ""
    lines = [
        f"{args.evaluations:,} evaluations per scenario{backlog}; {args.workers} workers, "
        f"concurrency {args.concurrency} ({args.pool}); faults on {args.fault_rate:.0%} of "
        f"TrustHub requests ({', '.join(args.faults)}); whole run {seconds / 60:.1f} min.",
        "",
        "| " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|" + "|".join("---" if i == 0 else "--:" for i in range(len(COLUMNS))) + "|",
    ]
    lines += ["| " + " | ".join(cell(r) for _, cell in COLUMNS) + " |" for r in results]
    lines.append("")
    for r in results:
        faults = ", ".join(f"{kind} {n}" for kind, n in r.faults.items())
        details = [
            f"requests took {r.request_seconds:.0f} s",
            f"TrustHub created {r.created_upstream:,}",
            f"faults injected: {faults or 'none'}",
        ]
        if r.disruption:
            details.insert(0, r.disruption)
        lines.append(f"- `{r.scenario}`: " + "; ".join(details) + ".")
        lines += [f"  - {note}" for note in r.notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
