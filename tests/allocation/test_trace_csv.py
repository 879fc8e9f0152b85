"""Trace CSV readers and the fleet import: strict errors, nothing half-imported, idempotent re-runs."""

from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from allocation.models import Quota
from allocation.trace import NODES_CSV, TASKS_CSV
from allocation.trace.csv_reader import TraceFormatError, read_nodes, read_tasks
from allocation.trace.importer import trace_import
from marketplace.models import Gpu, Node, Organization

NODE_HEADER = "sn,cpu_milli,memory_mib,gpu,model\n"
TASK_HEADER = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_bundled_files_read_in_full():
    nodes = read_nodes(NODES_CSV)
    tasks = read_tasks(TASKS_CSV)

    assert len(nodes) == 1213
    assert sum(node.gpu_count for node in nodes) == 6212
    assert len(tasks) == 8152
    assert tasks[1].gpu_milli == 460


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        ("", 1, None, "empty"),
        ("sn,cpu,memory_mib,gpu,model\n", 1, None, "header"),
        (NODE_HEADER + "n1,64000,262144,2,P100\nn2,64000,262144\n", 3, "gpu", "found 3 fields"),
        (NODE_HEADER + "n1,lots,262144,2,P100\n", 2, "cpu_milli", "not an integer"),
        (NODE_HEADER + "n1,64000,262144,2,H100\n", 2, "model", "not a GPU model"),
        (NODE_HEADER + "n1,64000,262144,0,T4\n", 2, "gpu", "out of range"),
        (NODE_HEADER + "n1,64000,262144,2,T4\nn1,64000,262144,2,T4\n", 3, "sn", "appears twice"),
        (NODE_HEADER, 2, None, "no node rows"),
    ],
)
def test_malformed_node_file_names_line_and_column(tmp_path, text, line, column, message):
    path = write(tmp_path, "nodes.csv", text)

    with pytest.raises(TraceFormatError) as raised:
        read_nodes(path)

    assert raised.value.line == line
    assert raised.value.column == column
    assert message in str(raised.value)
    assert str(raised.value).startswith(f"nodes.csv, line {line}")


@pytest.mark.parametrize(
    ("row", "column", "message"),
    [
        ("p1,1000,1024,1,1000,,LS,Running,10,5", "scheduled_time", "found 10 fields"),
        ("p1,1000,1024,1,1500,,LS,Running,0,10,0", "gpu_milli", "out of range"),
        ("p1,1000,1024,0,500,,LS,Running,0,10,0", "gpu_milli", "both must be 0"),
        ("p1,1000,1024,1,500,H100,LS,Running,0,10,0", "gpu_spec", "unknown GPU model"),
        ("p1,1000,1024,1,500,,LS,Running,-3,10,0", "creation_time", "out of range"),
        ("p1,1000,1024,1,500,,LS,Running,0,ten,0", "deletion_time", "not an integer"),
    ],
)
def test_malformed_task_row_names_line_and_column(tmp_path, row, column, message):
    path = write(tmp_path, "tasks.csv", TASK_HEADER + "p0,1000,1024,1,1000,,LS,Running,0,10,0\n" + row + "\n")

    with pytest.raises(TraceFormatError) as raised:
        read_tasks(path)

    assert raised.value.line == 3
    assert raised.value.column == column
    assert message in str(raised.value)


def test_truncated_task_file_is_rejected(tmp_path):
    text = TASKS_CSV.read_text()[:5000]
    path = write(tmp_path, "tasks.csv", text)

    with pytest.raises(TraceFormatError, match="truncated"):
        read_tasks(path)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(TraceFormatError, match="cannot open"):
        read_nodes(tmp_path / "absent.csv")


@pytest.mark.django_db
def test_malformed_node_file_imports_nothing(tmp_path):
    path = write(tmp_path, "nodes.csv", NODE_HEADER + "n1,64000,262144,2,P100\nn2,64000,oops,2,T4\n")

    with pytest.raises(CommandError, match=r"Nothing was imported\. nodes\.csv, line 3, column 'memory_mib'"):
        call_command("import_trace", "--nodes", str(path))

    assert Node.objects.count() == 0
    assert Organization.objects.count() == 0


@pytest.mark.django_db
def test_import_creates_fleet_once():
    first = trace_import(nodes_path=NODES_CSV)
    snapshot = list(Node.objects.order_by("hostname").values_list("hostname", "provider__slug", "region__code",
                                                                   "price_per_gpu_hour"))
    second = trace_import(nodes_path=NODES_CSV)

    assert (first.nodes_created, first.gpus_created) == (1213, 6212)
    assert (second.nodes_created, second.gpus_created) == (0, 0)
    assert Node.objects.count() == 1213
    assert Gpu.objects.count() == 6212
    assert snapshot == list(Node.objects.order_by("hostname").values_list("hostname", "provider__slug",
                                                                          "region__code", "price_per_gpu_hour"))
    assert Organization.objects.filter(kind="customer").count() == 8
    assert Quota.objects.count() == 8


@pytest.mark.django_db
def test_import_keeps_quota_edited_by_admin():
    trace_import(nodes_path=NODES_CSV)
    Quota.objects.update(max_gpu_milli=7)

    trace_import(nodes_path=NODES_CSV)

    assert set(Quota.objects.values_list("max_gpu_milli", flat=True)) == {7}


@pytest.mark.django_db
def test_import_replicas_multiply_fleet(tmp_path):
    path = write(tmp_path, "nodes.csv", NODE_HEADER + "n1,64000,262144,2,P100\nn2,96000,393216,8,G2\n")

    summary = trace_import(nodes_path=path, replicas=3)

    assert summary.nodes_total == 6
    assert summary.gpus_total == 30
    assert Node.objects.filter(hostname="n2-r2").exists()


@pytest.mark.parametrize(
    ("row", "column", "message"),
    [
        ("n1,\u0666\u0664\u0660\u0660\u0660,262144,2,T4", "cpu_milli", "not an integer"),
        ("n1,99999999999,262144,2,T4", "cpu_milli", "out of range"),
        ("n1,64000,99999999999999999999,2,T4", "memory_mib", "at most 19 digits"),
        ("n1,64000,9999999999999999999,2,T4", "memory_mib", "out of range"),
        ("n\x001,64000,262144,2,T4", "sn", "not a valid name"),
        ("n" * 300 + ",64000,262144,2,T4", "sn", "not a valid name"),
    ],
)
def test_node_values_outside_bounds_are_rejected(tmp_path, row, column, message):
    path = write(tmp_path, "nodes.csv", NODE_HEADER + row + "\n")

    with pytest.raises(TraceFormatError) as raised:
        read_nodes(path)

    assert raised.value.column == column
    assert message in str(raised.value)


def test_invalid_utf8_names_its_line(tmp_path):
    rows = "".join(f"n{i},64000,262144,2,T4\n" for i in range(3000))
    path = tmp_path / "nodes.csv"
    path.write_bytes((NODE_HEADER + rows).encode() + b"bad\xff,1,1,1,T4\n")

    with pytest.raises(TraceFormatError) as raised:
        read_nodes(path)

    assert raised.value.line == 3002
    assert "not valid UTF-8" in str(raised.value)


def test_huge_deletion_time_is_rejected(tmp_path):
    path = write(tmp_path, "tasks.csv", TASK_HEADER + "p0,1000,1024,1,1000,,LS,Running,0,99999999999999,0\n")

    with pytest.raises(TraceFormatError, match="deletion_time"):
        read_tasks(path)


@pytest.mark.django_db
def test_replay_start_outside_years_is_clear_error():
    trace_import(nodes_path=NODES_CSV)

    with pytest.raises(CommandError, match="outside the years 1970 to 9000"):
        call_command("replay_trace", "--limit", "5", "--start", "9999-12-31T00:00:00+00:00")


@pytest.mark.django_db
def test_replay_ending_after_year_9999_is_clear_error():
    from datetime import datetime, timezone

    from allocation.trace.replay import trace_replay

    trace_import(nodes_path=NODES_CSV)

    with pytest.raises(RuntimeError, match="ends after the year 9999"):
        trace_replay(tasks_path=TASKS_CSV, trace_start_at=datetime(9999, 12, 1, tzinfo=timezone.utc), limit=5)


@pytest.mark.django_db
def test_replay_unknown_policy_is_clear_error():
    trace_import(nodes_path=NODES_CSV)

    with pytest.raises(CommandError, match=r"Unknown placement policy 'nosuch'\. Use one of: best_fit, dot_product, fgd, fgd_best_fit, gap_squares, gap_squares_waste, gpu_packing, random\.$"):
        call_command("replay_trace", "--limit", "5", "--policy", "nosuch")


@pytest.mark.parametrize(
    ("row", "column", "message"),
    [
        ("p1,1000,1024,1,500,,LS,Running,10,5,0", "deletion_time", "before creation_time"),
        ("p1,1000,1024,1,500,,XX,Running,0,10,0", "qos", "not a QoS class"),
        ("p1,1000,1024,1,500,,LS,Sleeping,0,10,0", "pod_phase", "not a phase"),
        ("p1," + "9" * 5000 + ",1024,1,500,,LS,Running,0,10,0", "cpu_milli", "at most 19 digits"),
    ],
)
def test_task_fields_checked_before_replay(tmp_path, row, column, message):
    path = write(tmp_path, "tasks.csv", TASK_HEADER + row + "\n")

    with pytest.raises(TraceFormatError) as raised:
        read_tasks(path)

    assert raised.value.column == column
    assert message in str(raised.value)


def test_unterminated_quote_is_rejected(tmp_path):
    path = write(tmp_path, "nodes.csv", NODE_HEADER + 'n1,64000,262144,2,"P100\n')

    with pytest.raises(TraceFormatError):
        read_nodes(path)
