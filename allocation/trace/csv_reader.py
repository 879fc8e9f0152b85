"""Strict readers for the trace's node and task CSV files; no Django imports.

A reader checks every row before returning anything, and raises ``TraceFormatError`` naming the
file, line and column of the first problem, so a malformed file imports nothing.
"""

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
TASK_COLUMNS = (
    "name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "gpu_spec", "qos", "pod_phase",
    "creation_time", "deletion_time", "scheduled_time",
)
TRACE_GPU_MODELS = frozenset({"A10", "G2", "G3", "P100", "T4", "V100M16", "V100M32"})

MAX_CPU_MILLICORES = 10_000_000
MAX_MEMORY_MIB = 1 << 40
MAX_TRACE_SECONDS = 10**9
"""Upper bounds far above any real machine or trace (10,000 cores, 1 EiB, 31 years)."""
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""Node and task names: ASCII letters, digits, dots, dashes and underscores, at most 128 characters."""
INTEGER_PATTERN = re.compile(r"-?[0-9]{1,19}")
TASK_QOS = frozenset({"LS", "BE", "Burstable", "Guaranteed"})
TASK_PHASES = frozenset({"Running", "Failed", "Pending", "Succeeded"})


class TraceFormatError(ValueError):
    """A trace file that cannot be read: which file, line and column, and what is wrong."""

    def __init__(self, path: Path, line: int | None, column: str | None, message: str):
        self.path, self.line, self.column = path, line, column
        where = path.name
        if line:
            where += f", line {line}"
        if column:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class TraceNode:
    hostname: str
    cpu_millicores: int
    memory_mib: int
    gpu_count: int
    gpu_model: str


@dataclass(frozen=True, slots=True)
class TraceTask:
    """One task; times are seconds from the start of the trace."""

    name: str
    cpu_millicores: int
    memory_mib: int
    gpu_count: int
    gpu_milli: int
    gpu_models: tuple[str, ...]
    qos: str
    phase: str
    creation_seconds: int
    deletion_seconds: int
    scheduled_seconds: int | None


class _RowReader:
    """Reads one CSV file row by row and converts fields, raising ``TraceFormatError`` on the first problem."""

    def __init__(self, path: Path, columns: tuple[str, ...]):
        self.path, self.columns = Path(path), columns
        self.line = 0

    def rows(self):
        reader = csv.reader(io.StringIO(self._read_text(), newline=""), strict=True)
        try:
            header = next(reader, None)
            self.line = reader.line_num
            if header is None:
                raise TraceFormatError(self.path, 1, None, "the file is empty; expected a header row.")
            if tuple(header) != self.columns:
                raise TraceFormatError(
                    self.path, 1, None, f"the header is {','.join(header)!r}; expected {','.join(self.columns)!r}.",
                )
            for fields in reader:
                self.line = reader.line_num
                if len(fields) != len(self.columns):
                    raise TraceFormatError(
                        self.path, self.line, self.columns[min(len(fields), len(self.columns) - 1)],
                        f"found {len(fields)} fields, expected {len(self.columns)}; the row is truncated or malformed.",
                    )
                yield dict(zip(self.columns, fields))
        except csv.Error as error:
            raise TraceFormatError(self.path, self.line + 1, None, f"not valid CSV: {error}.") from error

    def _read_text(self) -> str:
        """Return the file decoded as UTF-8; a decoding error names the line of the bad byte."""
        try:
            data = self.path.read_bytes()
        except OSError as error:
            raise TraceFormatError(self.path, None, None, f"cannot open the file: {error.strerror}.") from error
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            raise TraceFormatError(self.path, line, None, f"byte {data[error.start]:#04x} is not valid UTF-8.") from None

    def integer(self, row: dict[str, str], column: str, *, minimum: int = 0, maximum: int | None = None,
                optional: bool = False) -> int | None:
        text = row[column].strip()
        if text == "" and optional:
            return None
        if not INTEGER_PATTERN.fullmatch(text):
            raise TraceFormatError(self.path, self.line, column, f"{text[:40]!r} is not an integer of at most 19 digits.")
        value = int(text)
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f"{minimum} or more"
            raise TraceFormatError(self.path, self.line, column, f"{value} is out of range; expected {bounds}.")
        return value

    def name(self, row: dict[str, str], column: str) -> str:
        text = row[column].strip()
        if not NAME_PATTERN.fullmatch(text):
            raise self.fail(column, f"{text[:40]!r} is not a valid name; use up to 128 ASCII letters, digits, '.', '-' or '_'.")
        return text

    def fail(self, column: str, message: str) -> TraceFormatError:
        return TraceFormatError(self.path, self.line, column, message)


def read_nodes(path: Path) -> list[TraceNode]:
    """Read and check a GPU node list; raise ``TraceFormatError`` on the first bad field."""
    reader = _RowReader(path, NODE_COLUMNS)
    nodes: list[TraceNode] = []
    seen: set[str] = set()
    for row in reader.rows():
        hostname = reader.name(row, "sn")
        if hostname in seen:
            raise reader.fail("sn", f"node {hostname!r} appears twice.")
        model = row["model"].strip()
        if model not in TRACE_GPU_MODELS:
            raise reader.fail("model", f"{model!r} is not a GPU model of the trace; expected one of {sorted(TRACE_GPU_MODELS)}.")
        seen.add(hostname)
        nodes.append(TraceNode(
            hostname=hostname,
            cpu_millicores=reader.integer(row, "cpu_milli", minimum=1, maximum=MAX_CPU_MILLICORES),
            memory_mib=reader.integer(row, "memory_mib", minimum=1, maximum=MAX_MEMORY_MIB),
            gpu_count=reader.integer(row, "gpu", minimum=1, maximum=64),
            gpu_model=model,
        ))
    if not nodes:
        raise TraceFormatError(Path(path), reader.line + 1, None, "the file has a header but no node rows.")
    return nodes


def read_tasks(path: Path) -> list[TraceTask]:
    """Read and check a task list; raise ``TraceFormatError`` on the first bad field."""
    reader = _RowReader(path, TASK_COLUMNS)
    tasks: list[TraceTask] = []
    seen: set[str] = set()
    for row in reader.rows():
        name = reader.name(row, "name")
        if name in seen:
            raise reader.fail("name", f"task {name!r} appears twice.")
        gpu_count = reader.integer(row, "num_gpu", maximum=64)
        gpu_milli = reader.integer(row, "gpu_milli", maximum=1000)
        if (gpu_count == 0) != (gpu_milli == 0):
            raise reader.fail("gpu_milli", f"num_gpu is {gpu_count} but gpu_milli is {gpu_milli}; both must be 0 or both positive.")
        gpu_models = tuple(model for model in row["gpu_spec"].strip().split("|") if model)
        unknown = [model for model in gpu_models if model not in TRACE_GPU_MODELS]
        if unknown:
            raise reader.fail("gpu_spec", f"unknown GPU model {unknown[0]!r}; expected models from {sorted(TRACE_GPU_MODELS)}.")
        creation = reader.integer(row, "creation_time", maximum=MAX_TRACE_SECONDS)
        deletion = reader.integer(row, "deletion_time", maximum=MAX_TRACE_SECONDS)
        if deletion < creation:
            raise reader.fail("deletion_time", f"{deletion} is before creation_time {creation}.")
        qos, phase = row["qos"].strip(), row["pod_phase"].strip()
        if qos not in TASK_QOS:
            raise reader.fail("qos", f"{qos[:40]!r} is not a QoS class; expected one of {sorted(TASK_QOS)}.")
        if phase not in TASK_PHASES:
            raise reader.fail("pod_phase", f"{phase[:40]!r} is not a phase; expected one of {sorted(TASK_PHASES)}.")
        seen.add(name)
        tasks.append(TraceTask(
            name=name,
            cpu_millicores=reader.integer(row, "cpu_milli", maximum=MAX_CPU_MILLICORES),
            memory_mib=reader.integer(row, "memory_mib", maximum=MAX_MEMORY_MIB),
            gpu_count=gpu_count,
            gpu_milli=gpu_milli,
            gpu_models=gpu_models,
            qos=qos,
            phase=phase,
            creation_seconds=creation,
            deletion_seconds=deletion,
            scheduled_seconds=reader.integer(row, "scheduled_time", maximum=MAX_TRACE_SECONDS, optional=True),
        ))
    if not tasks:
        raise TraceFormatError(Path(path), reader.line + 1, None, "the file has a header but no task rows.")
    return tasks
