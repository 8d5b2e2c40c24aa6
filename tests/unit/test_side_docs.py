"""docs/side-service.md's Envoy and Istio configuration, checked against the published protos (xds-protos):
a field Envoy does not have, or a value of the wrong type, fails here rather than in an operator's Envoy."""

from __future__ import annotations

import pytest

yaml = pytest.importorskip("yaml")
json_format = pytest.importorskip("google.protobuf.json_format")

from envoy.config.route.v3 import route_components_pb2  # noqa: E402
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2  # noqa: E402
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2  # noqa: E402
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: E402, F401 - the Router's @type resolves
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: E402

from fastguard.testing.side import docs_block  # noqa: E402


def test_the_envoy_filters_parse_as_envoy_messages_and_fail_closed():
    hcm = json_format.ParseDict(yaml.safe_load(docs_block("envoy")),
                                http_connection_manager_pb2.HttpConnectionManager())
    authz, ratelimit = ext_authz_pb2.ExtAuthz(), rate_limit_pb2.RateLimit()
    assert hcm.http_filters[0].typed_config.Unpack(authz) and hcm.http_filters[1].typed_config.Unpack(ratelimit)
    assert authz.failure_mode_allow is False and authz.grpc_service.envoy_grpc.cluster_name == "fastguard"
    assert ratelimit.failure_mode_deny is True and ratelimit.domain == "api"
    assert hcm.http_filters[-1].name == "envoy.filters.http.router"


def test_the_envoy_route_parses_and_names_the_domain():
    route = json_format.ParseDict(yaml.safe_load(docs_block("envoy-route")), route_components_pb2.Route())
    assert len(route.route.rate_limits) == 2
    per_route = ext_authz_pb2.ExtAuthzPerRoute()
    assert route.typed_per_filter_config["envoy.filters.http.ext_authz"].Unpack(per_route)
    assert per_route.check_settings.context_extensions["domain"] == "api"


def test_the_istio_extension_provider_uses_meshconfig_field_names():
    # Istio's mesh/v1alpha1/config.proto, MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationGrpcProvider
    grpc_fields = {"service", "port", "timeout", "failOpen", "statusOnError", "includeRequestBodyInCheck"}
    providers = yaml.safe_load(docs_block("istio"))["meshConfig"]["extensionProviders"]
    assert [set(p) for p in providers] == [{"name", "envoyExtAuthzGrpc"}]
    assert set(providers[0]["envoyExtAuthzGrpc"]) <= grpc_fields


def test_the_counts_block_loads_as_documented():
    from fastguard.side.policy import load_domain
    from fastguard.side.shared import Counts

    text = "domain: api\ndescriptors:\n  - key: remote_address\n    rate_limit: {unit: minute, requests_per_unit: 5}\n"
    counts = Counts.of(load_domain(text + docs_block("counts"), "docs.yaml"))
    assert counts.scope == "ns:api" and counts.on_error == "allow" and counts.prefix == "fg-kong-ns:api"
    assert dict(counts.kong_keys) == {"remote_address": "ip", "api_key": "header"}
