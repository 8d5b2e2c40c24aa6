"""`fastguard serve` answering Envoy's RateLimitService over real gRPC: a real server process, a grpcio client on
the published Envoy stubs (xds-protos), envoyproxy/ratelimit's README facts over the wire."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

grpc = pytest.importorskip("grpc")
rls_pb2 = pytest.importorskip("envoy.service.ratelimit.v3.rls_pb2")
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2  # noqa: E402
from envoy.service.ratelimit.v3 import rls_pb2_grpc  # noqa: E402

from fastguard.testing.servers import free_port  # noqa: E402

R = rls_pb2.RateLimitResponse
MESSAGING = """
domain: messaging
descriptors:
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 5}
  - key: to_number
    rate_limit: {unit: day, requests_per_unit: 100, name: per_number}
  - key: ldap
    rate_limit: {unlimited: true}
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    folder = tmp_path_factory.mktemp("domains")
    (folder / "messaging.yaml").write_text(MESSAGING)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fastguard.cli", "serve", "--config", str(folder), "--grpc",
                             f"127.0.0.1:{port}", "--headers"], stderr=subprocess.PIPE, text=True)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
    except grpc.FutureTimeoutError:
        proc.kill()
        pytest.fail(f"fastguard serve did not answer: {proc.communicate()[1]}")
    yield rls_pb2_grpc.RateLimitServiceStub(channel)
    channel.close()
    proc.terminate()
    proc.wait(10)


def request(domain, *descriptors, hits=0):
    return rls_pb2.RateLimitRequest(domain=domain, hits_addend=hits, descriptors=[
        ratelimit_pb2.RateLimitDescriptor(entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v)
                                                   for k, v in d]) for d in descriptors])


def test_statuses_in_request_order_and_an_or_of_all_matches(service):
    number = f"206{time.time_ns() % 10**7:07d}"
    marketing = [("message_type", "marketing"), ("to_number", number)]
    per_number = [("to_number", number)]
    answers = [service.ShouldRateLimit(request("messaging", marketing, per_number), timeout=5) for _ in range(6)]
    assert [a.overall_code for a in answers] == [R.OK] * 5 + [R.OVER_LIMIT]
    first, last = answers[0], answers[-1]
    assert [s.code for s in first.statuses] == [R.OK, R.OK]
    assert first.statuses[0].current_limit.requests_per_unit == 5
    assert first.statuses[0].current_limit.unit == R.RateLimit.DAY and first.statuses[0].limit_remaining == 4
    assert first.statuses[1].current_limit.name == "per_number" and first.statuses[1].limit_remaining == 99
    assert 0 < first.statuses[0].duration_until_reset.seconds <= 86_400
    assert [s.code for s in last.statuses] == [R.OVER_LIMIT, R.OK]
    assert last.statuses[1].limit_remaining == 95           # the refused request counted in neither
    headers = {h.key: h.value for h in last.response_headers_to_add}
    assert headers["RateLimit-Limit"] == "5" and headers["RateLimit-Remaining"] == "0"


def test_unlimited_unknown_descriptors_and_domains_hits_addend_and_overrides(service):
    a = service.ShouldRateLimit(request("messaging", [("ldap", "x")], [("nothing", "here")]), timeout=5)
    assert a.overall_code == R.OK and a.statuses[0].limit_remaining == 2**32 - 1
    assert not a.statuses[1].HasField("current_limit")
    assert service.ShouldRateLimit(request("no-such-domain", [("k", "v")]), timeout=5).overall_code == R.OK
    number = f"207{time.time_ns() % 10**7:07d}"
    a = service.ShouldRateLimit(request("messaging", [("to_number", number)], hits=100), timeout=5)
    assert a.overall_code == R.OK and a.statuses[0].limit_remaining == 0
    assert service.ShouldRateLimit(request("messaging", [("to_number", number)]), timeout=5).overall_code \
        == R.OVER_LIMIT
    override = rls_pb2.RateLimitRequest(domain="no-such-domain", descriptors=[ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="user", value=number)],
        limit=ratelimit_pb2.RateLimitDescriptor.RateLimitOverride(requests_per_unit=1, unit=R.RateLimit.HOUR))])
    assert [service.ShouldRateLimit(override, timeout=5).overall_code for _ in range(2)] == [R.OK, R.OVER_LIMIT]


def test_bad_requests_are_errors_not_allows(service):
    for bad in (request("", [("k", "v")]), request("messaging")):
        with pytest.raises(grpc.RpcError) as info:
            service.ShouldRateLimit(bad, timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    huge = request("messaging", *[[("to_number", "x" * 100)] for _ in range(1000)])   # ~100 KB
    with pytest.raises(grpc.RpcError) as info:
        service.ShouldRateLimit(huge, timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    many = request("messaging", *[[("to_number", str(i))] for i in range(300)])       # past 256 descriptors
    assert service.ShouldRateLimit(many, timeout=5).overall_code == R.OVER_LIMIT


def test_a_config_that_does_not_load_stops_the_service_saying_where(tmp_path):
    (tmp_path / "bad.yaml").write_text(textwrap.dedent("""
        domain: bad
        descriptors:
          - key: k
            rate_limit: {unit: fortnight, requests_per_unit: 1}
        """))
    run = subprocess.run([sys.executable, "-m", "fastguard.cli", "serve", "--config", str(tmp_path), "--grpc",
                          f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60,
                         env={**os.environ})
    assert run.returncode == 2 and "bad.yaml" in run.stderr and "invalid rate limit unit" in run.stderr


def test_hot_reload_keeps_unchanged_counts_and_refuses_a_broken_file(tmp_path):
    """The config folder is watched (and SIGHUP reloads at once): a new version validated whole replaces the old;
    a rule that did not change keeps its counts; a file that does not load leaves the running policy in place,
    with one line naming the file and what is wrong."""
    import signal

    folder = tmp_path / "domains"
    folder.mkdir()
    policy = folder / "api.yaml"
    policy.write_text("domain: api\ndescriptors:\n  - key: user\n    rate_limit: {unit: hour, requests_per_unit: 3}\n")
    log_path = tmp_path / "serve.log"
    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "fastguard.cli", "serve", "--config", str(folder), "--grpc",
                                 f"127.0.0.1:{port}", "--reload-interval", "60"], stderr=log)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)

        def ask(*descriptor):
            return stub.ShouldRateLimit(request("api", list(descriptor)), timeout=5).overall_code

        def reload(times):
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while log_path.read_text().count("configuration") < times:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)

        user = ("user", f"u{time.time_ns()}")
        assert [ask(user) for _ in range(2)] == [R.OK, R.OK]
        policy.write_text(policy.read_text() + "  - key: tenant\n    rate_limit: {unit: hour, requests_per_unit: 1}\n")
        reload(1)
        assert [ask(user) for _ in range(2)] == [R.OK, R.OVER_LIMIT]        # 3 per hour, counted across the reload
        assert [ask(("tenant", "t")) for _ in range(2)] == [R.OK, R.OVER_LIMIT]   # the new rule
        policy.write_text(policy.read_text().replace("requests_per_unit: 3", "requests_per_unit: x"))
        reload(2)
        refused = [line for line in log_path.read_text().splitlines() if "is not used" in line]
        # one line naming the file, the line and the field
        assert len(refused) == 1 and "api.yaml:4: descriptors[0].rate_limit.requests_per_unit: " \
            "requests_per_unit must be a whole number, got 'x'" in refused[0], refused
        assert ask(("tenant", "t2")) == R.OK                                   # the running policy stayed
    finally:
        channel.close()
        proc.terminate()
        proc.wait(10)
