"""GPU discovery and readings: NVML first, then ``nvidia-smi -q -x``, or a fake backend that replays a recording.

Units: memory in MiB, temperature in degrees Celsius, power in watts, utilisation in percent.
``ecc_uncorrected`` counts volatile uncorrected ECC errors since the driver loaded; ``xid_events``
lists the XID codes seen since the previous reading.
"""

import itertools
import json
import logging
import shutil
import subprocess
import uuid as uuid_module
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

RECORDINGS = Path(__file__).parent / "recordings"


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    model: str
    memory_mib: int


@dataclass(frozen=True)
class Inventory:
    """The GPUs and driver versions that discovery found on the node."""

    gpus: tuple[GpuInfo, ...]
    driver_version: str = ""
    cuda_version: str = ""
    backend: str = ""

    def as_json(self) -> dict:
        return {"driver_version": self.driver_version, "cuda_version": self.cuda_version, "backend": self.backend,
                "gpus": [asdict(gpu) for gpu in self.gpus]}


@dataclass(frozen=True)
class GpuReading:
    uuid: str
    temperature_c: float | None = None
    utilization_pct: float | None = None
    memory_used_mib: int | None = None
    power_w: float | None = None
    ecc_uncorrected: int = 0
    xid_events: tuple[int, ...] = field(default_factory=tuple)

    def as_json(self) -> dict:
        values = asdict(self)
        values["xid_events"] = list(self.xid_events)
        return values


class DiscoveryError(Exception):
    """No backend can read the GPUs."""


class NvmlBackend:
    """Reads the GPUs through NVML (the nvidia-ml-py bindings)."""

    name = "nvml"

    def __init__(self):
        import pynvml

        self.nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            raise DiscoveryError(f"NVML did not initialise: {error}") from error
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(index) for index in range(pynvml.nvmlDeviceGetCount())]
        self._xid_set = None
        try:
            self._xid_set = pynvml.nvmlEventSetCreate()
            for handle in self._handles:
                pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, self._xid_set)
        except pynvml.NVMLError as error:
            logger.warning("XID events are not available through NVML: %s", error)
            self._xid_set = None

    def inventory(self) -> Inventory:
        nvml = self.nvml
        gpus = []
        for index, handle in enumerate(self._handles):
            gpus.append(GpuInfo(index=index, uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                                model=_text(nvml.nvmlDeviceGetName(handle)),
                                memory_mib=int(nvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024))))
        cuda = nvml.nvmlSystemGetCudaDriverVersion()
        return Inventory(gpus=tuple(gpus), driver_version=_text(nvml.nvmlSystemGetDriverVersion()),
                         cuda_version=f"{cuda // 1000}.{cuda % 1000 // 10}", backend=self.name)

    def readings(self) -> list[GpuReading]:
        nvml = self.nvml
        xids = self._pending_xids()
        result = []
        for handle in self._handles:
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            result.append(GpuReading(
                uuid=uuid,
                temperature_c=_optional(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
                utilization_pct=_optional(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                memory_used_mib=_optional(lambda: nvml.nvmlDeviceGetMemoryInfo(handle).used // (1024 * 1024)),
                power_w=_optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000),
                ecc_uncorrected=_optional(lambda: nvml.nvmlDeviceGetTotalEccErrors(
                    handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC)) or 0,
                xid_events=tuple(xids.get(uuid, ())),
            ))
        return result

    def _pending_xids(self) -> dict[str, list[int]]:
        events: dict[str, list[int]] = {}
        if self._xid_set is None:
            return events
        while True:
            try:
                event = self.nvml.nvmlEventSetWait(self._xid_set, 0)
            except self.nvml.NVMLError:
                return events
            events.setdefault(_text(self.nvml.nvmlDeviceGetUUID(event.device)), []).append(int(event.eventData))


class NvidiaSmiBackend:
    """Reads the GPUs by parsing ``nvidia-smi -q -x``; XID events are not in that output."""

    name = "nvidia-smi"

    def __init__(self, command: str = "nvidia-smi"):
        if shutil.which(command) is None:
            raise DiscoveryError(f"{command} is not on the PATH.")
        self.command = command

    def _query(self) -> ElementTree.Element:
        try:
            output = subprocess.run([self.command, "-q", "-x"], capture_output=True, check=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as error:
            raise DiscoveryError(f"{self.command} -q -x failed: {error}") from error
        return parse_nvidia_smi_xml(output)

    def inventory(self) -> Inventory:
        return inventory_from_xml(self._query(), backend=self.name)

    def readings(self) -> list[GpuReading]:
        return readings_from_xml(self._query())


def parse_nvidia_smi_xml(output: bytes) -> ElementTree.Element:
    try:
        return ElementTree.fromstring(output)
    except ElementTree.ParseError as error:
        raise DiscoveryError(f"nvidia-smi printed XML that does not parse: {error}") from error


def inventory_from_xml(root: ElementTree.Element, backend: str = "nvidia-smi") -> Inventory:
    """Return the GPUs of an ``nvidia-smi -q -x`` document."""
    gpus = []
    for index, gpu in enumerate(root.findall("gpu")):
        gpus.append(GpuInfo(index=_int(gpu.findtext("minor_number"), index), uuid=gpu.findtext("uuid", "").strip(),
                            model=gpu.findtext("product_name", "").strip(),
                            memory_mib=_int(gpu.findtext("fb_memory_usage/total"), 0)))
    return Inventory(gpus=tuple(gpus), driver_version=root.findtext("driver_version", "").strip(),
                     cuda_version=root.findtext("cuda_version", "").strip(), backend=backend)


def readings_from_xml(root: ElementTree.Element) -> list[GpuReading]:
    """Return one reading per GPU of an ``nvidia-smi -q -x`` document."""
    return [
        GpuReading(
            uuid=gpu.findtext("uuid", "").strip(),
            temperature_c=_float(gpu.findtext("temperature/gpu_temp")),
            utilization_pct=_float(gpu.findtext("utilization/gpu_util")),
            memory_used_mib=_int(gpu.findtext("fb_memory_usage/used"), None),
            power_w=_float(gpu.findtext("gpu_power_readings/power_draw") or gpu.findtext("power_readings/power_draw")),
            ecc_uncorrected=_int(gpu.findtext("ecc_errors/volatile/dram_uncorrectable")
                                 or gpu.findtext("ecc_errors/volatile/double_bit/total"), 0) or 0,
        )
        for gpu in root.findall("gpu")
    ]


class FakeBackend:
    """Replays a recording: its inventory, then its readings in a loop (for tests and the demo).

    A recording is JSON: ``{"driver_version", "cuda_version", "gpus": [{index, uuid, model,
    memory_mib}], "readings": [[{uuid, temperature_c, ...}, ...], ...]}``. ``uuids`` replaces the
    recorded UUIDs in order, and keeps only that many GPUs, so one recording can stand for any node.
    """

    name = "fake"

    def __init__(self, path: Path, uuids: list[str] | None = None, *, uuid_seed: str | None = None):
        try:
            recording = json.loads(Path(path).read_text())
            if not uuids and uuid_seed:
                # Each node replaying the same recording gets its own GPU UUIDs, stable across restarts.
                uuids = [f"GPU-{uuid_module.uuid5(uuid_module.NAMESPACE_URL, f'marketplace-agent/{uuid_seed}/{index}')}"
                         for index in range(len(recording["gpus"]))]
            self._load(recording, uuids)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
            raise DiscoveryError(f"Cannot read the recording {path}: {type(error).__name__}: {error}. A recording "
                                 f"is a JSON object with gpus (index, uuid, model, memory_mib) and a non-empty "
                                 f"list of readings.") from error

    def _load(self, recording: dict, uuids: list[str] | None) -> None:
        if not recording.get("readings"):
            raise ValueError("the recording has no readings")
        if uuids:
            recording["gpus"] = recording["gpus"][:len(uuids)]
        recorded = [gpu["uuid"] for gpu in recording["gpus"]]
        mapping = dict(zip(recorded, uuids or recorded))
        self._inventory = Inventory(
            gpus=tuple(GpuInfo(index=gpu["index"], uuid=mapping[gpu["uuid"]], model=gpu["model"],
                               memory_mib=gpu["memory_mib"]) for gpu in recording["gpus"]),
            driver_version=recording.get("driver_version", ""), cuda_version=recording.get("cuda_version", ""),
            backend=self.name,
        )
        steps = [[GpuReading(**{**reading, "uuid": mapping[reading["uuid"]],
                                "xid_events": tuple(reading.get("xid_events", ()))})
                  for reading in step if reading["uuid"] in mapping]
                 for step in recording["readings"]]
        self._steps = itertools.cycle(steps)

    def inventory(self) -> Inventory:
        return self._inventory

    def readings(self) -> list[GpuReading]:
        return next(self._steps)


def open_backend(name: str = "auto", *, recording: Path | None = None, uuids: list[str] | None = None,
                 uuid_seed: str | None = None):
    """Return the backend called ``name``; "auto" tries NVML, then nvidia-smi. Raise ``DiscoveryError`` if none works."""
    if name == "fake":
        return FakeBackend(recording or RECORDINGS / "healthy-8gpu.json", uuids, uuid_seed=uuid_seed)
    failures = []
    for candidate in ((NvmlBackend, NvidiaSmiBackend) if name == "auto" else
                      (NvmlBackend,) if name == "nvml" else (NvidiaSmiBackend,)):
        try:
            return candidate()
        except (DiscoveryError, ImportError) as error:
            failures.append(f"{candidate.name}: {error}")
            logger.info("GPU backend %s is not available: %s", candidate.name, error)
    raise DiscoveryError("No GPU backend works here (" + "; ".join(failures) + "). Install the NVIDIA driver, or "
                         "run with --backend fake --recording FILE for a test.")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(read):
    try:
        return read()
    except Exception:  # a GPU that lacks one sensor still reports the others
        return None


def _number(text: str | None) -> str | None:
    if text is None:
        return None
    token = text.strip().split(" ")[0]
    return None if token in ("", "N/A", "[N/A]", "[Not", "Not") else token


def _float(text: str | None) -> float | None:
    token = _number(text)
    try:
        return float(token) if token is not None else None
    except ValueError:
        return None


def _int(text: str | None, default):
    token = _number(text)
    try:
        return int(float(token)) if token is not None else default
    except ValueError:
        return default
