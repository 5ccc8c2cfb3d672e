"""Pytest plugin: one in-thread TrustHub sandbox per session, reset to the demo world per test."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trusthub_eval.sandbox import SandboxServer

DEMO_WORLD = Path(__file__).resolve().parent.parent / "fixtures" / "demo" / "world.json"


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    """The session's sandbox on 127.0.0.1 and a free port, serving from a daemon thread."""
    server = SandboxServer(DEMO_WORLD, host="127.0.0.1", port=0).start()
    yield server
    server.stop()


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Iterator[SandboxServer]:
    """The sandbox with the demo world restored and no faults, requests or stats left over."""
    sandbox_server.reset()
    yield sandbox_server
    # A fault a test did not consume must not leak into a later test that skips this fixture.
    sandbox_server.clear_faults()
    # A request a test left stalled (its client timed out) would otherwise finish during the
    # next test and show up in that test's request log and stats.
    deadline = time.monotonic() + 10
    while sandbox_server.stats["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)


def demo_world_with(tmp_path: Path, **changes: object) -> tuple[Path, tuple[str, str]]:
    """A copy of the demo world with ``changes`` at its top level, written under ``tmp_path``;
    its path and its credentials."""
    world = {**json.loads(DEMO_WORLD.read_text()), **changes}
    path = tmp_path / "world.json"
    path.write_text(json.dumps(world))
    return path, (world["account_sid"], world["auth_token"])
