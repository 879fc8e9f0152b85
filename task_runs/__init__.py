"""Runs of long Celery tasks (trace replay, forecast refresh, rebalancing proposal) and their progress."""
