"""Many threads on one table: never more admissions than the limit allows."""

import threading

import numpy as np
import pytest

import fastguard as fg


def _run_threads(target, n):
    barrier = threading.Barrier(n)
    results = [0] * n
    errors = []

    def body(i):
        try:
            barrier.wait()
            results[i] = target(i)
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


@pytest.mark.parametrize("alg", fg.ALGORITHMS)
@pytest.mark.parametrize("max_keys", [100, 1_000_000])   # one shard, and 64 shards
def test_four_threads_on_one_key_admit_exactly_the_limit(make, alg, max_keys):
    lim = make("5000/hour", alg, max_keys=max_keys)
    now = 864_000.0  # frozen time: nothing refills, so exactly 5000 may pass

    def worker(i):
        admitted = 0
        if i % 2 == 0:
            for _ in range(3000):
                admitted += lim.hit("hot", now=now).allowed
        else:
            for _ in range(30):
                admitted += int(lim.hit_many(["hot"] * 100, now=now).allowed.sum())
        return admitted

    assert sum(_run_threads(worker, 4)) == 5000
    st = lim.stats()
    assert st["hits"] == 12_000 and st["denials"] == 7_000


def test_threads_over_many_keys_keep_every_count(make):
    lim = make("10/hour", "sliding_window", max_keys=1_000_000)
    now = 864_000.0
    ids = np.arange(20_000, dtype=np.uint64)

    def worker(i):
        admitted = 0
        rng = np.random.default_rng(i)
        for _ in range(10):
            batch = rng.permutation(ids)
            admitted += int(lim.hit_many(batch, now=now).allowed.sum())
            for k in range(0, 200):
                admitted += lim.hit(f"s{k}", now=now).allowed
        return admitted

    total = sum(_run_threads(worker, 4))
    # 4 threads x 10 rounds x 20_000 ids = 40 hits per id, 10 allowed each; 200 str keys x 40 hits, 10 allowed.
    assert total == 20_000 * 10 + 200 * 10
    assert lim.stats()["keys"] == 20_200
