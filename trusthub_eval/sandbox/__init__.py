"""An offline TrustHub v1 for the demo, development and tests (standard library only)."""

from .faults import Fault
from .server import SandboxServer
from .world import World, WorldError, load_world

__all__ = ["Fault", "SandboxServer", "World", "WorldError", "load_world"]
