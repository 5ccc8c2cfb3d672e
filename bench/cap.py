"""What the fleet-wide cap adds to one TrustHub call, with the code found first on sys.path.

    python bench/cap.py --base-url http://127.0.0.1:8765 --account-sid AC… --auth-token … \
        --profile BU… [--redis redis://127.0.0.1:6379/12]

The same client and call (a customer profile fetched from a sandbox, no added latency) with and
without a Redis limiter, call after call in turn; and the limiter's slot taken and given back
alone. Prints one JSON object of the medians of the single calls' times, in milliseconds (the
medians, because a shared machine delays a call now and then by more than the whole cost).
``bench/throughput.py`` runs it for every code version it compares (``PYTHONPATH`` set to that
version's checkout).
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--account-sid", required=True)
    parser.add_argument("--auth-token", required=True)
    parser.add_argument("--profile", required=True)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()

    import redis

    from trusthub_eval.client import TrustHubClient
    from trusthub_eval.concurrency import RedisConcurrencyLimiter

    cap = RedisConcurrencyLimiter(
        args.redis, 1000, account=f"bench-{secrets.token_hex(4)}", lease=60, wait=10
    )
    clients = {
        name: TrustHubClient(
            account_sid=args.account_sid,
            auth_token=args.auth_token,
            base_url=args.base_url,
            limiter=limiter,
        )
        for name, limiter in (("bare", None), ("capped", cap))
    }
    times: dict[str, list[float]] = {name: [] for name in (*clients, "slot")}
    for client in clients.values():
        for _ in range(50):  # warm up: the connections, the script cached by Redis
            client.fetch_customer_profile(args.profile)
    clock = time.perf_counter
    for _ in range(args.calls):
        for name, client in clients.items():
            started = clock()
            client.fetch_customer_profile(args.profile)
            times[name].append((clock() - started) * 1000)
        started = clock()
        with cap.slot():
            pass
        times["slot"].append((clock() - started) * 1000)
    redis.Redis.from_url(args.redis).delete(cap.key, f"{cap.key}:freed")
    medians = {name: statistics.median(values) for name, values in times.items()}
    json.dump(
        {
            "bare_ms": medians["bare"],
            "capped_ms": medians["capped"],
            "overhead_ms": medians["capped"] - medians["bare"],
            "slot_ms": medians["slot"],
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
