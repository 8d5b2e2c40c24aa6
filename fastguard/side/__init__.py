"""The side service's policies: envoyproxy/ratelimit's domain files (fastguard.side.policy) and the decisions a
request's descriptors get (fastguard.side.decide)."""
