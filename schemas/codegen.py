"""Regenerate the Python stubs for every .proto under schemas/.

The .proto files are the single source of truth; the generated ``*_pb2.py``,
``*_pb2.pyi`` and ``*_pb2_grpc.py`` files are committed next to them so that an
installed package needs no protoc. ``tests/unit/test_codegen.py`` regenerates
into a temporary folder and fails if the committed files differ, so the two
cannot drift apart.

Usage: ``python -m schemas.codegen [--out DIR]`` (needs grpcio-tools, a test
dependency).
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

import google.rpc

SCHEMAS_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCHEMAS_DIR.parent

# Services get *_pb2_grpc.py; plain message files do not need one.
SERVICE_PROTOS = {
    "schemas/mixer/adapter/model/v1beta1/infrastructure_backend.proto",
    "schemas/mixer/template/metric/template_handler_service.proto",
}


def proto_files() -> list[str]:
    """All .proto files, as paths relative to the repository root (their import names)."""
    return sorted(p.relative_to(REPO_ROOT).as_posix() for p in SCHEMAS_DIR.rglob("*.proto"))


def _include_dirs() -> list[str]:
    """The well-known types come from grpc_tools, google.rpc from googleapis-common-protos."""
    grpc_tools_proto = str(resources.files("grpc_tools") / "_proto")
    googleapis_root = str(Path(next(iter(google.rpc.__path__))).parent.parent)
    return [str(REPO_ROOT), grpc_tools_proto, googleapis_root]


def generate(out_dir: Path) -> None:
    """Run protoc over every schema file, writing the stubs below ``out_dir``.

    Raises:
        RuntimeError: protoc reported an error.
    """
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    includes = [f"-I{d}" for d in _include_dirs()]
    files = proto_files()
    plain = [f for f in files if f not in SERVICE_PROTOS]
    services = [f for f in files if f in SERVICE_PROTOS]
    common = ["grpc_tools.protoc", *includes, f"--python_out={out_dir}", f"--pyi_out={out_dir}"]
    if protoc.main([*common, *plain]) != 0:
        raise RuntimeError(f"protoc failed on {plain}")
    if protoc.main([*common, f"--grpc_python_out={out_dir}", *services]) != 0:
        raise RuntimeError(f"protoc failed on {services}")


def generated_files(root: Path) -> dict[str, bytes]:
    """The generated stubs below ``root``, keyed by path relative to it."""
    patterns = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py")
    found: dict[str, bytes] = {}
    for pattern in patterns:
        for path in (root / "schemas").rglob(pattern):
            found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="output root (default: the repository)")
    args = parser.parse_args(argv)
    generate(args.out)
    print(f"generated {len(generated_files(args.out))} files under {args.out / 'schemas'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
