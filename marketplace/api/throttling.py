"""Throttling of agents per node key: the user-based throttles see agents as anonymous."""

from rest_framework.throttling import SimpleRateThrottle


class AgentRateThrottle(SimpleRateThrottle):
    """Counts requests per node key; other requests are left to the user and anonymous throttles."""

    scope = "agent"

    def get_cache_key(self, request, view):
        credential = request.auth
        node_id = getattr(credential, "node_id", None)
        if node_id is None or not hasattr(credential, "secret_hash"):
            return None
        return self.cache_format % {"scope": self.scope, "ident": f"node-{node_id}"}
