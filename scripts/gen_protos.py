"""Generate Python code and the descriptor set from protos/, only when they changed.

The output directory carries a stamp: a hash of every .proto file and of the code
generator's version. When the stamp does not match, the whole directory is deleted and
generated again, so no stale module can survive a rename or a removal.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN = ROOT / "gen"
THIRD_PARTY = ROOT / "build" / "third_party"
STAMP = GEN / ".stamp"
DESCRIPTOR_SET = GEN / "etax_descriptor.pb"
# google/api/*.proto come from googleapis-common-protos; buf needs them as files.
VENDORED = ("google/api/annotations.proto", "google/api/http.proto")


def proto_files() -> list[Path]:
    return sorted(PROTOS.rglob("*.proto"))


def fingerprint() -> str:
    digest = hashlib.sha256()
    digest.update(importlib.metadata.version("grpcio-tools").encode())
    for path in proto_files():
        digest.update(str(path.relative_to(PROTOS)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def is_fresh() -> bool:
    return STAMP.exists() and STAMP.read_text().strip() == fingerprint()


def generate() -> None:
    site_packages = Path(sysconfig.get_paths()["purelib"])
    shutil.rmtree(GEN, ignore_errors=True)
    GEN.mkdir(parents=True)
    files = [str(p.relative_to(PROTOS)) for p in proto_files()]
    subprocess.run(  # noqa: S603 - fixed arguments
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{site_packages}",
            f"--python_out={GEN}",
            f"--pyi_out={GEN}",
            f"--grpc_python_out={GEN}",
            f"--descriptor_set_out={DESCRIPTOR_SET}",
            "--include_imports",
            "--include_source_info",
            *files,
        ],
        check=True,
    )
    for package_dir in [GEN / "etax", *(p for p in (GEN / "etax").rglob("*") if p.is_dir())]:
        (package_dir / "__init__.py").touch()
    (GEN / "etax" / "py.typed").touch()
    for name in VENDORED:
        target = THIRD_PARTY / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(site_packages / name, target)
    STAMP.write_text(fingerprint() + "\n")


def main() -> int:
    if "--check" in sys.argv:
        if is_fresh():
            return 0
        print("generated code is stale: run `make protos`", file=sys.stderr)
        return 1
    if "--force" in sys.argv or not is_fresh():
        generate()
        print(f"generated {len(proto_files())} proto files into {GEN.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
