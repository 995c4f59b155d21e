"""The committed protobuf/gRPC stubs must be exactly what ``make codegen`` produces.

The .proto files under ``schemas/`` are the source of truth, but the package
ships the generated ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` files so
that an installed collector needs no protoc. This test regenerates every stub
into a temporary folder with :func:`schemas.codegen.generate` and compares the
result, file set and bytes, against the committed copies; if someone edits a
.proto (or a stub) without regenerating, it fails and says what to run.
"""

from __future__ import annotations

import difflib

import pytest

from schemas import codegen

REPO_ROOT = codegen.REPO_ROOT


def _first_diff_lines(committed: bytes, fresh: bytes, limit: int = 12) -> str:
    """A short unified diff of two text files, for the failure message."""
    diff = difflib.unified_diff(
        committed.decode("utf-8", "replace").splitlines(),
        fresh.decode("utf-8", "replace").splitlines(),
        "committed",
        "regenerated",
        lineterm="",
    )
    lines = list(diff)
    shown = "\n".join(lines[:limit])
    return shown + ("\n      ..." if len(lines) > limit else "")


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("codegen")
    codegen.generate(out)
    return codegen.generated_files(out)


@pytest.fixture(scope="module")
def committed() -> dict[str, bytes]:
    return codegen.generated_files(REPO_ROOT)


def test_every_proto_has_committed_stubs(committed: dict[str, bytes]) -> None:
    """Each .proto gets a _pb2.py and a _pb2.pyi; service files also get a _pb2_grpc.py."""
    expected: set[str] = set()
    for proto in codegen.proto_files():
        stem = proto.removesuffix(".proto")
        expected |= {f"{stem}_pb2.py", f"{stem}_pb2.pyi"}
        if proto in codegen.SERVICE_PROTOS:
            expected.add(f"{stem}_pb2_grpc.py")
    missing = sorted(expected - set(committed))
    assert not missing, f"committed stubs missing for: {missing}; run `make codegen`"


def test_committed_stubs_match_regenerated(regenerated: dict[str, bytes], committed: dict[str, bytes]) -> None:
    """Regenerating from the .proto files reproduces the committed stubs byte for byte."""
    assert regenerated, "codegen produced no files"
    only_fresh = sorted(set(regenerated) - set(committed))
    only_committed = sorted(set(committed) - set(regenerated))
    differing = sorted(p for p in set(regenerated) & set(committed) if regenerated[p] != committed[p])
    if only_fresh or only_committed or differing:
        parts = ["the committed generated stubs are out of date; run `make codegen` and commit the result."]
        if only_fresh:
            parts.append(f"generated but not committed: {only_fresh}")
        if only_committed:
            parts.append(f"committed but no longer generated (stale, delete them): {only_committed}")
        if differing:
            parts.append(f"differ from the regenerated version: {differing}")
            for path in differing:
                parts.append(f"  {path}:\n{_first_diff_lines(committed[path], regenerated[path])}")
        pytest.fail("\n".join(parts), pytrace=False)
    assert set(regenerated) == set(committed)
