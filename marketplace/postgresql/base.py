"""The PostgreSQL backend: django-prometheus's (Django's, with query metrics) and a cheaper health check.

With ``CONN_HEALTH_CHECKS``, Django checks a kept connection before the first query of each
request. Its PostgreSQL backend sends ``SELECT 1``, one round trip per request: 4.5 % of a web
worker's samples under the spread mix of ``make bench-api`` (py-spy). An idle connection
whose server has gone (a restart, ``pg_terminate_backend``, a crash) has input waiting, because
the server sent an error and closed its end. So an idle connection with nothing to read is
taken as usable without a query, and one with input waiting is closed and replaced.

NOTE: a server that vanished without closing the socket (a network partition) leaves nothing
to read, so the next query fails instead, as it would with no health check. Input the server
sends an idle session for other reasons (a parameter change after a configuration reload, a
notice) also closes the connection, which costs one reconnection and loses nothing.
"""

import select

from django_prometheus.db.backends.postgresql import base
from psycopg.pq import TransactionStatus


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self) -> bool:
        """Return whether the kept connection can run the next query, querying only when it is inside a transaction."""
        connection = self.connection
        if connection is None or connection.closed or connection.broken:
            return False
        if connection.info.transaction_status != TransactionStatus.IDLE:
            return super().is_usable()
        # poll, not select: select fails on descriptors numbered 1024 and above.
        poller = select.poll()
        poller.register(connection.fileno(), select.POLLIN)
        return not poller.poll(0)
