"""The fastguard plugin as a kong-pdk plugin module, for kong-python-pluginserver -d.

The logic lives in fastguard/kong/plugins.py; this file only names it the way kong-pdk expects.
kong-pdk's loader stores each plugin module in sys.modules under the plugin's name, and this plugin is named
like the package: so this module also stands in for the package (its names and its __path__), or every later
`import fastguard...` in the server process would find this file instead.
"""


import fastguard as _package
from fastguard.kong.server import plugin_module

globals().update({k: v for k, v in vars(_package).items() if k not in ("__name__", "__file__", "__spec__",
                                                                       "__loader__", "__doc__")})
_module = plugin_module("fastguard")
Plugin = _module.Plugin
Schema = _module.Schema
version = _module.version
priority = _module.priority
