"""``python -m trusthub_eval.sandbox``: serve the TrustHub sandbox until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from .server import SandboxServer
from .world import WorldError


def _stop(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into the same clean exit path as Ctrl-C.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, start the server and serve in this thread."""
    parser = argparse.ArgumentParser(
        prog="python -m trusthub_eval.sandbox", description="An offline Twilio TrustHub v1."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--world", default=None, help="world JSON file (default: packaged)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    try:
        server = SandboxServer(args.world, host=args.host, port=args.port, quiet=not args.verbose)
    except (WorldError, OSError) as exc:
        print(f"trusthub sandbox: {exc}", file=sys.stderr)
        return 2
    # SIGINT too: a shell starts background jobs (`make run`'s `&`) with SIGINT ignored.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(server.startup_message(), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
