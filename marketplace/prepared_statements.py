"""Replace a PostgreSQL connection whose prepared statements a migration has made stale.

With server-side binding psycopg prepares a statement after five runs on a connection. A
migration that changes a column's type, even one that only widens it, makes PostgreSQL reject a
prepared statement that reads the column ("cached plan must not change result type"). The
error repeats on every run on that connection, and Django keeps the connection because its
health check still passes. This wrapper marks such a connection obsolete, so Django closes it
when the request or task ends and the next connection prepares its statements afresh. Each
connection then fails once, instead of on every request until the process restarts.
"""

import logging

from django.db.backends.signals import connection_created
from django.db.utils import NotSupportedError

logger = logging.getLogger(__name__)

STALE_PLAN_MESSAGE = "cached plan must not change result type"


def close_after_stale_plan(execute, sql, params, many, context):
    """Run the statement. If PostgreSQL rejects a stale prepared plan, mark the connection for closing and raise."""
    try:
        return execute(sql, params, many, context)
    except NotSupportedError as error:
        if STALE_PLAN_MESSAGE in str(error):
            logger.warning("A migration made this connection's prepared statements stale (%s). The connection "
                           "closes when this request or task ends", error)
            context["connection"].close_at = 0
        raise


def install_wrapper(sender, connection, **kwargs) -> None:
    """Add ``close_after_stale_plan`` to each new PostgreSQL connection, once per connection wrapper."""
    if connection.vendor == "postgresql" and close_after_stale_plan not in connection.execute_wrappers:
        connection.execute_wrappers.append(close_after_stale_plan)


def connect_signals() -> None:
    connection_created.connect(install_wrapper, dispatch_uid="prepared_statements_install_wrapper")
