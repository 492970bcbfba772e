"""Generate the checked-in Python code for every ``.proto`` under ``protos/``.

This is the one script that writes ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py``.
It runs ``grpc_tools.protoc`` (the pinned ``grpcio-tools``, so output is
byte-for-byte reproducible) and writes each generated file next to its source.

Why the staging step: the folder ``protos/`` is installed as the package
``stamen.protos``, but protoc derives Python module paths from the include path.
So the sources are copied to ``<tmp>/stamen/protos/<area>/v1/x.proto`` and that
temp dir is the include root. Generated modules then import each other as
``stamen.protos.<area>.v1.x_pb2``, and a ``.proto`` that needs another one imports
it as ``import "stamen/protos/update/v1/update.proto";``.

Examples:
    python scripts/gen_protos.py              # regenerate in place
    python scripts/gen_protos.py --check      # exit 1 and list files that drifted
    python scripts/gen_protos.py --out-dir D  # write into D (mirrors protos/) instead
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTOS_DIR = REPO_ROOT / "protos"
PACKAGE_PREFIX = Path("stamen") / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(protos_dir: Path) -> dict[Path, bytes]:
    """Run protoc over every ``.proto`` under ``protos_dir``.

    Returns the generated files as ``{path relative to protos_dir: content}``.
    """
    sources = sorted(p.relative_to(protos_dir) for p in protos_dir.rglob("*.proto"))
    if not sources:
        return {}
    with tempfile.TemporaryDirectory(prefix="stamen-protos-") as tmp:
        include_root = Path(tmp) / "src"
        out_root = Path(tmp) / "out"
        out_root.mkdir()
        for rel in sources:
            staged = include_root / PACKAGE_PREFIX / rel
            staged.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(protos_dir / rel, staged)
        well_known = resources.files("grpc_tools") / "_proto"
        args = [
            "grpc_tools.protoc",
            f"-I{include_root}",
            f"-I{well_known}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            *(str(PACKAGE_PREFIX / rel) for rel in sources),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed; see the messages above")
        generated_root = out_root / PACKAGE_PREFIX
        return {
            path.relative_to(generated_root): path.read_bytes()
            for path in sorted(generated_root.rglob("*"))
            if path.is_file() and path.name.endswith(GENERATED_SUFFIXES)
        }


def checked_in(protos_dir: Path) -> dict[Path, bytes]:
    """The generated files currently present under ``protos_dir``."""
    return {
        path.relative_to(protos_dir): path.read_bytes()
        for path in sorted(protos_dir.rglob("*"))
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES)
    }


def drifted(protos_dir: Path) -> list[str]:
    """Lines describing every generated file that differs from a fresh generation."""
    fresh = generate(protos_dir)
    present = checked_in(protos_dir)
    problems = []
    for rel in sorted(fresh.keys() | present.keys()):
        if rel not in present:
            problems.append(f"missing: protos/{rel}")
        elif rel not in fresh:
            problems.append(f"stale (no .proto generates it): protos/{rel}")
        elif fresh[rel] != present[rel]:
            problems.append(f"differs: protos/{rel}")
    return problems


def write(files: dict[Path, bytes], out_dir: Path) -> None:
    """Write ``files`` under ``out_dir``, touching only files whose bytes change."""
    for rel, content in files.items():
        target = out_dir / rel
        if target.exists() and target.read_bytes() == content:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        print(f"wrote {target}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check", action="store_true", help="regenerate in a temp dir; exit 1 on any drift"
    )
    mode.add_argument(
        "--out-dir", type=Path, help="write generated files here instead of next to sources"
    )
    parser.add_argument(
        "--protos-dir", type=Path, default=PROTOS_DIR, help="source root (default: protos/)"
    )
    args = parser.parse_args(argv)
    protos_dir: Path = args.protos_dir.resolve()

    if args.check:
        problems = drifted(protos_dir)
        for line in problems:
            print(line)
        if problems:
            print("generated protobuf code is out of date; run: python scripts/gen_protos.py")
            return 1
        return 0

    fresh = generate(protos_dir)
    if args.out_dir is not None:
        write(fresh, args.out_dir)
        return 0
    write(fresh, protos_dir)
    for rel in sorted(checked_in(protos_dir).keys() - fresh.keys()):
        (protos_dir / rel).unlink()
        print(f"removed stale protos/{rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
