"""The fastguard plugin as a kong-pdk plugin module, for kong-python-pluginserver -d.

The logic lives in fastguard/kong/plugins.py; this file only names it the way kong-pdk expects.
"""

from fastguard.kong.server import plugin_module

_module = plugin_module("fastguard")
Plugin = _module.Plugin
Schema = _module.Schema
version = _module.version
priority = _module.priority
