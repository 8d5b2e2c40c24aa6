"""Worked examples, installed as `fastguard._examples` (package data, no Python API):

* `kong/api_key_guard.py` — a plugin of your own on `fastguard kong-server --module` (docs/kong.md), also benchmarked;
* `kong/Dockerfile`, `kong/kong.yaml`, `kong/docker-compose.yaml` — Kong's image with the three plugins, a decK file
  and a composition with Redis (docs/kong.md, "kong.conf").
"""
