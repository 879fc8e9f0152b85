"""The GPU marketplace's provider agent: one process per node, standard library plus NVML bindings."""

__version__ = "0.1.0"
