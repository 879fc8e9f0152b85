"""The Redis transport of the Celery broker, with a worker that survives losing Redis while tasks run.

kombu 5.7 puts a channel's unacknowledged messages back on the queue when the channel closes. When
the connection to Redis was lost, that step fails with an AttributeError that kombu does not treat
as a connection error, and the worker exits ("Unrecoverable error") instead of reconnecting. This
transport catches that failure: the messages stay in Redis's unacknowledged set and are delivered
again after the visibility timeout (or were lost with a Redis restart, which beat's periodic tasks
and the task ledger cover).
"""

import logging

from kombu.transport import redis as kombu_redis

logger = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    def restore_unacked_once(self, stderr=None):
        try:
            return super().restore_unacked_once(stderr)
        except (AttributeError, *kombu_redis.Transport.connection_errors) as error:
            logger.warning("Could not requeue %d unacknowledged messages while closing the broker connection (%r); "
                           "Redis delivers them again after the visibility timeout", len(self._delivered), error)
            return None


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel
