"""Core domain of the GPU marketplace: organizations, providers, regions, nodes and GPUs."""

from .celery import app as celery_app

__all__ = ["celery_app"]
