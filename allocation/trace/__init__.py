"""Import of the Alibaba GPU cluster trace 2023 and its replay through the reservation service."""

from pathlib import Path

TRACE_DIR = Path(__file__).resolve().parents[2] / "data" / "alibaba-gpu-v2023"
NODES_CSV = TRACE_DIR / "openb_node_list_gpu_node.csv"
TASKS_CSV = TRACE_DIR / "openb_pod_list_default.csv"
