import pytest


@pytest.fixture(autouse=True)
def heartbeats_stored_at_once(settings):
    """Store each heartbeat in its request, as without Redis; the queue's own test turns the queue on."""
    settings.MARKETPLACE = {**settings.MARKETPLACE, "HEARTBEAT_QUEUE": False}
