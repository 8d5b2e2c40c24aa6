"""The floor of the Kong benchmarks: a kong-pdk plugin that does nothing but one PDK call per request."""

Schema = ()
version = "1.0.0"
priority = 0


class Plugin:
    def __init__(self, config):
        self.config = config

    def access(self, kong):
        kong.request.get_header("x-floor")
