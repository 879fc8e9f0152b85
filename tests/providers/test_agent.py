"""The provider agent: discovery backends, outages of the marketplace, and a run against a live server."""

import subprocess
import sys
from pathlib import Path

import pytest

from marketplace.models import GpuReading, Node
from marketplace_agent.agent import Agent, AgentConfig
from marketplace_agent.client import MarketplaceClient, RejectedError, TransientError
from marketplace_agent.discovery import RECORDINGS, FakeBackend, inventory_from_xml, parse_nvidia_smi_xml, readings_from_xml
from scheduler.agents import node_credential_issue

NVIDIA_SMI_XML = b"""<?xml version="1.0" ?>
<nvidia_smi_log>
  <driver_version>550.54.15</driver_version>
  <cuda_version>12.4</cuda_version>
  <gpu id="00000000:07:00.0">
    <product_name>NVIDIA H200</product_name>
    <uuid>GPU-8c4c1a2b-5d6e-4f70-8a9b-0c1d2e3f4a5b</uuid>
    <minor_number>0</minor_number>
    <fb_memory_usage><total>143771 MiB</total><used>512 MiB</used></fb_memory_usage>
    <utilization><gpu_util>7 %</gpu_util></utilization>
    <ecc_errors><volatile><dram_uncorrectable>0</dram_uncorrectable></volatile></ecc_errors>
    <temperature><gpu_temp>31 C</gpu_temp></temperature>
    <gpu_power_readings><power_draw>74.52 W</power_draw></gpu_power_readings>
  </gpu>
</nvidia_smi_log>
"""


def test_nvidia_smi_xml_gives_inventory_and_readings():
    root = parse_nvidia_smi_xml(NVIDIA_SMI_XML)

    inventory = inventory_from_xml(root)
    [reading] = readings_from_xml(root)

    assert inventory.driver_version == "550.54.15"
    assert inventory.cuda_version == "12.4"
    assert [(gpu.index, gpu.model, gpu.memory_mib) for gpu in inventory.gpus] == [(0, "NVIDIA H200", 143771)]
    assert reading.uuid == "GPU-8c4c1a2b-5d6e-4f70-8a9b-0c1d2e3f4a5b"
    assert (reading.temperature_c, reading.utilization_pct, reading.memory_used_mib) == (31.0, 7.0, 512)
    assert reading.power_w == pytest.approx(74.52)


class FlakyClient:
    """Fails ``failures`` times with a transient error, then records what it receives."""

    def __init__(self, failures: int = 0, reject: bool = False):
        self.failures, self.reject = failures, reject
        self.registered, self.batches = 0, []

    def register(self, inventory, agent_version):
        self._maybe_fail()
        self.registered += 1
        return {}

    def heartbeat(self, snapshots, agent_version):
        self._maybe_fail()
        if self.reject:
            raise RejectedError("HTTP 400")
        self.batches.append(list(snapshots))
        return {}

    def _maybe_fail(self):
        if self.failures:
            self.failures -= 1
            raise TransientError("connection refused")


def run_agent(client, iterations: int, buffer_size: int = 5):
    clock = [0.0]
    agent = Agent(FakeBackend(RECORDINGS / "healthy-8gpu.json"), client,
                  AgentConfig(interval_seconds=10, buffer_size=buffer_size, max_backoff_seconds=40),
                  sleep=lambda seconds: clock.__setitem__(0, clock[0] + max(seconds, 10)),
                  clock=lambda: clock[0], random_fraction=lambda: 1.0)
    agent.run(iterations=iterations)
    return agent


def test_outage_buffers_a_bounded_number_of_readings():
    agent = run_agent(FlakyClient(failures=10**6), iterations=12)

    assert len(agent.buffer) == 5
    assert agent.dropped == 7
    assert not agent.registered


def test_readings_flush_in_order_after_the_outage():
    client = FlakyClient(failures=3)

    agent = run_agent(client, iterations=12, buffer_size=50)

    assert client.registered == 1
    sent = [snapshot["at"] for batch in client.batches for snapshot in batch]
    assert len(sent) == 12
    assert sent == sorted(sent)
    assert not agent.buffer


def test_rejected_batch_is_dropped_and_the_agent_goes_on():
    agent = run_agent(FlakyClient(reject=True), iterations=3)

    assert agent.failures >= 1
    assert len(agent.buffer) <= 1


def test_unreachable_marketplace_never_crashes_the_agent():
    client = MarketplaceClient("http://127.0.0.1:9", "mpn_x_y", timeout_seconds=0.5)

    agent = run_agent(client, iterations=3)

    assert agent.failures >= 1
    assert len(agent.buffer) == 3


@pytest.mark.django_db(transaction=True)
def test_agent_command_reports_to_a_live_server(live_server, t4_node):
    key = node_credential_issue(node=t4_node)
    uuids = [str(gpu.uuid) for gpu in t4_node.gpus.order_by("index")]
    command = [sys.executable, "-m", "marketplace_agent.cli", "--url", live_server.url, "--key", key,
               "--backend", "fake", "--interval", "0.2", "--iterations", "3", "--log-level", "WARNING"]
    for uuid in uuids:
        command += ["--uuid", f"GPU-{uuid}"]

    completed = subprocess.run(command, capture_output=True, text=True, timeout=60,
                               cwd=Path(__file__).resolve().parents[2])

    assert completed.returncode == 0, completed.stderr
    assert GpuReading.objects.filter(gpu__node=t4_node).count() == 6
    t4_node.refresh_from_db()
    assert t4_node.health == "healthy"
    assert t4_node.agent_version == "0.1.0"
    assert Node.objects.get(pk=t4_node.pk).last_heartbeat_at is not None


def test_agent_command_without_a_key_explains_how_to_get_one():
    completed = subprocess.run([sys.executable, "-m", "marketplace_agent.cli", "--backend", "fake"],
                               capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})

    assert completed.returncode == 2
    assert "--key" in completed.stderr


@pytest.mark.parametrize("content", ["[]", '{"gpus": []}', '{"gpus": [{"index": 0}], "readings": [[]]}',
                                     '{"gpus": [], "readings": []}'])
def test_malformed_recording_is_a_discovery_error(tmp_path, content):
    from marketplace_agent.discovery import DiscoveryError

    path = tmp_path / "recording.json"
    path.write_text(content)

    with pytest.raises(DiscoveryError):
        FakeBackend(path)


def test_fake_gpus_differ_per_node_key():
    first = FakeBackend(RECORDINGS / "healthy-8gpu.json", uuid_seed="aaa").inventory()
    second = FakeBackend(RECORDINGS / "healthy-8gpu.json", uuid_seed="bbb").inventory()

    assert not {gpu.uuid for gpu in first.gpus} & {gpu.uuid for gpu in second.gpus}


class WrongKeyClient(FlakyClient):
    def register(self, inventory, agent_version):
        from marketplace_agent.client import ConfigurationError

        raise ConfigurationError("HTTP 401")


def test_wrong_key_keeps_the_buffered_readings():
    agent = run_agent(WrongKeyClient(), iterations=4, buffer_size=10)

    assert len(agent.buffer) == 4


@pytest.mark.parametrize("arguments", [["--url", "127.0.0.1:8000"], ["--interval", "inf"], ["--interval", "nan"]])
def test_bad_command_line_values_exit_with_2(arguments):
    completed = subprocess.run([sys.executable, "-m", "marketplace_agent.cli", "--backend", "fake", "--key",
                                "mpn_a_b", *arguments], capture_output=True, text=True, timeout=30)

    assert completed.returncode == 2
