"""Throttling of agents per node key: the user-based throttles see agents as anonymous."""

from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle


class AgentRateThrottle(SimpleRateThrottle):
    """Counts requests per node key; other requests are left to the user and anonymous throttles."""

    scope = "agent"

    def get_cache_key(self, request, view):
        credential = _node_credential(request)
        if credential is None:
            return None
        return self.cache_format % {"scope": self.scope, "ident": f"node-{credential.node_id}"}


class AnonymousRateThrottle(AnonRateThrottle):
    """Counts requests without a user per client address, apart from agents, which are counted per node key.

    Agents have no Django user, so DRF's anonymous throttle would count every node behind one address
    (a provider's NAT) against one budget: 40 nodes sending a heartbeat every 6 s already pass 300 a minute.
    """

    def get_cache_key(self, request, view):
        if _node_credential(request) is not None:
            return None
        return super().get_cache_key(request, view)


def _node_credential(request):
    credential = request.auth
    if getattr(credential, "node_id", None) is None or not hasattr(credential, "secret_hash"):
        return None
    return credential
