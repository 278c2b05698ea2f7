"""The committed stubs must be exactly what `make proto` generates from the proto today."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTO = "inference_service/v1/inference.proto"
GENERATED = ["inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py"]


def test_stubs_match_the_proto(tmp_path):
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "protos"),
            f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
            str(REPO / "protos" / PROTO),
        ],
        check=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / "inference_service" / "v1" / name).read_text()
        committed = (REPO / "inference_service" / "v1" / name).read_text()
        assert committed == fresh, f"inference_service/v1/{name} drifted from {PROTO}: run `make proto`"


def test_stubs_import_from_the_package():
    from inference_service.v1 import inference_pb2, inference_pb2_grpc

    assert inference_pb2.DESCRIPTOR.package == "inference_service.v1"
    assert hasattr(inference_pb2_grpc, "InferenceServiceStub")
