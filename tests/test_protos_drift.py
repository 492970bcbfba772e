"""The checked-in protobuf code is exactly what scripts/gen_protos.py generates today."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gen_protos.py"
PROTOS = REPO / "protos"
GENERATED = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def run_script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def generated_files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and path.name.endswith(GENERATED)
    }


def test_regenerated_code_matches_checked_in_byte_for_byte(tmp_path: Path) -> None:
    result = run_script("--out-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    fresh = generated_files(tmp_path)
    checked_in = generated_files(PROTOS)
    assert "update/v1/update_pb2.py" in fresh
    assert "monitor/v1/monitor_pb2_grpc.py" in fresh
    assert "edge/v1/edge_pb2_grpc.py" in fresh
    assert sorted(fresh) == sorted(checked_in), "run: python scripts/gen_protos.py"
    drifted = [name for name in fresh if fresh[name] != checked_in[name]]
    assert not drifted, f"regenerate with python scripts/gen_protos.py: {drifted}"


def test_check_mode_reports_an_edited_proto(tmp_path: Path) -> None:
    copy = tmp_path / "protos"
    shutil.copytree(PROTOS, copy)
    assert run_script("--check", "--protos-dir", copy).returncode == 0

    proto = copy / "update" / "v1" / "update.proto"
    proto.write_text(proto.read_text().replace("bytes values = 14;", "bytes values = 30;"))
    result = run_script("--check", "--protos-dir", copy)
    assert result.returncode == 1
    assert "differs: protos/update/v1/update_pb2.py" in result.stdout


def test_generated_module_has_the_package_path_other_protos_import() -> None:
    from stamen.protos.update.v1 import update_pb2

    assert update_pb2.DESCRIPTOR.name == "stamen/protos/update/v1/update.proto"
    assert update_pb2.DESCRIPTOR.package == "stamen.update.v1"


def test_monitor_service_stubs_are_generated() -> None:
    from stamen.protos.monitor.v1 import monitor_pb2, monitor_pb2_grpc

    assert monitor_pb2.DESCRIPTOR.package == "stamen.monitor.v1"
    service = monitor_pb2.DESCRIPTOR.services_by_name["Monitor"]
    assert [m.name for m in service.methods] == [
        "WatchRounds",
        "ListDevices",
        "WatchDevices",
        "GetStatus",
        "Control",
    ]
    assert hasattr(monitor_pb2_grpc, "MonitorStub")
    assert hasattr(monitor_pb2_grpc, "add_MonitorServicer_to_server")


def test_edge_protocol_has_its_service_and_grpc_stubs() -> None:
    from stamen.protos.edge.v1 import edge_pb2, edge_pb2_grpc

    assert edge_pb2.DESCRIPTOR.package == "stamen.edge.v1"
    service = edge_pb2.DESCRIPTOR.services_by_name["EdgeService"]
    assert [m.name for m in service.methods] == [
        "Join",
        "Authenticate",
        "Tasks",
        "Upload",
        "UploadWhole",
        "Heartbeat",
    ]
    assert hasattr(edge_pb2_grpc, "EdgeServiceStub")
