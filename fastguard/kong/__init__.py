"""fastguard.kong: Kong plugins served by kong-pdk's plugin server.

    fastguard kong-server fastguard-rate-limiting --socket /usr/local/kong/fastguard_rl.socket
    fastguard kong-server fastguard-jwt --dump          # what Kong's query_cmd reads

Plugins: `fastguard-rate-limiting`, `fastguard-jwt`, `fastguard` (JWT, then a rate limit by a verified claim).
The modules in PLUGIN_DIR load unchanged in the stock `kong-python-pluginserver -d PLUGIN_DIR`. See docs/kong.md.
"""

from importlib import resources

from fastguard.kong.fields import ConfigError
from fastguard.kong.plugins import PLUGINS, GuardPlugin, JWTPlugin, RateLimitingPlugin

#: A folder of kong-pdk plugin modules named after the plugins (for kong-python-pluginserver -d): bindings/kong/plugins
#: in a checkout, fastguard/_bindings/kong/plugins once installed.
PLUGIN_DIR = str(resources.files("fastguard._bindings").joinpath("kong", "plugins"))

__all__ = ["PLUGINS", "PLUGIN_DIR", "RateLimitingPlugin", "JWTPlugin", "GuardPlugin", "ConfigError"]
