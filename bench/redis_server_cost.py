"""Where a pipelined strict `hit_many` spends Redis's time: the script's server-side cost per decision, by algorithm,
next to the floors of its two Redis commands (`MGET` of a batch, `SET … PX` of each key), from Redis's own
`INFO commandstats` on a redis-server started here.

    python -m bench.redis_server_cost [--batches 200]

Prints µs of Redis time per decision: hit (decide and store), peek (decide only), and the command floors.
"""

from __future__ import annotations

import argparse
import time

import redis

import fastguard as fg
from fastguard.redis import RedisStore
from fastguard.redis.strict import BATCH_KEYS
from fastguard.testing.servers import RedisProcess


def _per_call_us(client: redis.Redis) -> float:
    return client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=200, help="script calls per figure (default: %(default)s)")
    args = parser.parse_args()
    server = RedisProcess()
    try:
        client = redis.Redis(port=server.port)
        keys = [f"batch-{i}" for i in range(BATCH_KEYS)]
        print(f"redis-server on port {server.port}; {BATCH_KEYS} keys per script call, {args.batches} calls each; "
              f"µs of Redis time per decision")
        for algorithm in fg.ALGORITHMS:
            lim = fg.RateLimiter("100000/minute", algorithm=algorithm,
                                 store=RedisStore(client, prefix=f"cost{time.time_ns()}"))
            lim.hit_many(keys)  # every key has a state
            table = lim._table
            names = [table.name(k) for k in keys]
            figures = []
            for commit in (b"1", b"0"):
                argv = table._args(None, commit, [1] * len(keys))
                client.config_resetstat()
                for _ in range(args.batches):
                    client.evalsha(table.store.sha, len(names), *names, *argv)
                figures.append(_per_call_us(client) / len(keys))
            print(f"  {algorithm:<15} hit {figures[0]:6.2f}   peek {figures[1]:6.2f}")
        for what, script in (("MGET of the batch", "redis.call('MGET', unpack(KEYS)) return 1"),
                             ("MGET + SET PX of each key", "local s = redis.call('MGET', unpack(KEYS)) "
                              "for i = 1, #KEYS do redis.call('SET', KEYS[i], s[i] or 'x', 'PX', 100000) end "
                              "return 1")):
            sha = client.script_load(script)
            client.config_resetstat()
            for _ in range(args.batches):
                client.evalsha(sha, len(keys), *keys)
            print(f"  floor: {what:<26} {_per_call_us(client) / len(keys):6.2f}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
