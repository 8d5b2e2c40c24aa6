"""What Redis and Kong load, installed as `fastguard._bindings` (package data, no Python API):

* `redis/decide.lua` — the script Redis runs for every strict decision (fastguard.redis.strict loads it);
* `kong/plugins/*.py` — one kong-pdk plugin module per fastguard plugin, for the stock
  `kong-python-pluginserver -d` (fastguard.kong.PLUGIN_DIR points here).

The Python adapters themselves live where their import names say: fastguard/redis/ and fastguard/kong/.
"""
