"""Support for fastguard's tests and benchmarks (not part of the gateway API): real servers started on free
loopback ports and stopped by pid (`servers`: redis-server, a Redis Cluster, kong-pdk's stock plugin server), and
signed tokens and keys (`tokens`). Installed with the package so the benchmarks run where fastguard is installed.
"""
