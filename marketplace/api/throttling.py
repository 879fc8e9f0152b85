"""API throttles: customers per user, agents per node key, other callers per client address.

DRF's own user and anonymous throttles count every caller without a Django user (agents included)
per address, so all nodes behind one provider's address would share one budget. These classes
leave agents to ``AgentRateThrottle`` alone. Client addresses come from ``REMOTE_ADDR`` unless
``NUM_PROXIES`` says how many proxies in front add ``X-Forwarded-For``.
"""

from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle


class AgentRateThrottle(SimpleRateThrottle):
    """Counts requests per node key; other requests are left to the user and anonymous throttles."""

    scope = "agent"

    def get_cache_key(self, request, view):
        credential = _node_credential(request)
        if credential is None:
            return None
        return self.cache_format % {"scope": self.scope, "ident": f"node-{credential.node_id}"}


class CustomerRateThrottle(UserRateThrottle):
    """Counts requests per signed-in user; requests without a user are left to the other throttles."""

    def get_cache_key(self, request, view):
        if not (request.user and request.user.is_authenticated):
            return None
        return super().get_cache_key(request, view)


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
