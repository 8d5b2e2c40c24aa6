"""fastguard.kong: Kong plugins served by kong-pdk's plugin server, and the API to write your own.

    fastguard kong-server fastguard-rate-limiting --socket /usr/local/kong/fastguard_rl.socket
    fastguard kong-server fastguard-jwt --dump          # what Kong's query_cmd reads
    fastguard kong-server my-plugin --module my_plugin.py --socket ...

Plugins: `fastguard-rate-limiting`, `fastguard-jwt`, `fastguard` (JWT, then a rate limit by a verified claim).
The modules in PLUGIN_DIR load unchanged in the stock `kong-python-pluginserver -d PLUGIN_DIR`.

Your own plugin (docs/kong.md, "Your own plugins"): a module with `Plugin` (a PluginBase subclass whose `steps()` is
a generator of PDK calls: it yields `(method, args)` and receives what Kong answered), `Schema = Plugin.schema()`,
`version` and `priority`. `fastguard kong-server NAME --module FILE` runs it like the bundled plugins, one step per
RPC on the server's event loop with no thread per event (yield MAY_WAIT before anything that waits on the network:
the rest of that step then runs on a worker thread); plain kong-pdk plugins (`access(self, kong)`) are served too,
on a thread pool.
"""

from importlib import resources

from fastguard.kong.fields import ConfigError, Field
from fastguard.kong.limiting import rate_limit_key
from fastguard.kong.pdk import MAY_WAIT, TERMINAL, PDKCall, PDKError, Steps, header, json_exit
from fastguard.kong.plugins import PLUGINS, GuardPlugin, JWTPlugin, PluginBase, RateLimitingPlugin

#: A folder of kong-pdk plugin modules named after the plugins (for kong-python-pluginserver -d): bindings/kong/plugins
#: in a checkout, fastguard/_bindings/kong/plugins once installed.
PLUGIN_DIR = str(resources.files("fastguard._bindings").joinpath("kong", "plugins"))

__all__ = ["PLUGINS", "PLUGIN_DIR", "RateLimitingPlugin", "JWTPlugin", "GuardPlugin", "ConfigError",
           "PluginBase", "Field", "PDKCall", "Steps", "PDKError", "TERMINAL", "MAY_WAIT", "json_exit", "header",
           "rate_limit_key"]
