"""Generate Python code and the descriptor set from protos/, only when they changed.

The output directory carries a stamp: a hash of every .proto file and of the code
generator's version. When the stamp does not match, the whole directory is deleted and
generated again, so no stale module can survive a rename or a removal.

The OpenAPI document and its reference page (gen/openapi/, `etax_platform.apidocs`) have a
stamp of their own: the protos, the protoc-gen-openapiv2 version and the Python code that
finishes the document (it takes the error texts and the gateway's replies too).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
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
OPENAPI = GEN / "openapi"
OPENAPI_STAMP = OPENAPI / ".stamp"
# `make protos` installs it (OPENAPIV2_VERSION); the same variable as etax_platform.apidocs.
OPENAPI_PLUGIN = Path(
    os.environ.get(
        "ETAX_PROTOC_GEN_OPENAPIV2", str(ROOT / "build" / "bin" / "protoc-gen-openapiv2")
    )
)
OPENAPI_SOURCES = (
    *sorted((ROOT / "etax_platform" / "apidocs").glob("*.py")),
    ROOT / "etax_platform" / "errors.py",
    ROOT / "etax_platform" / "gateway" / "replies.py",
)


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


def openapi_fingerprint() -> str:
    if not OPENAPI_PLUGIN.is_file():
        return "no plugin"
    version = subprocess.run(  # noqa: S603 - our plugin
        [str(OPENAPI_PLUGIN), "--version"], capture_output=True, text=True, check=True
    ).stdout
    digest = hashlib.sha256(fingerprint().encode())
    digest.update(version.encode())
    for path in OPENAPI_SOURCES:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def openapi_is_fresh() -> bool:
    return OPENAPI_STAMP.exists() and OPENAPI_STAMP.read_text().strip() == openapi_fingerprint()


def generate_openapi() -> None:
    """gen/openapi/: the document and the reference page (needs the generated code)."""
    if not OPENAPI_PLUGIN.is_file():
        sys.exit(f"{OPENAPI_PLUGIN} is missing: `make protos` installs it (go install)")
    shutil.rmtree(OPENAPI, ignore_errors=True)
    subprocess.run(  # noqa: S603 - fixed arguments
        [
            sys.executable,
            "-m",
            "etax_platform.apidocs",
            "build",
            "--dir",
            str(OPENAPI),
            "--plugin",
            str(OPENAPI_PLUGIN),
        ],
        check=True,
        cwd=ROOT,
    )
    OPENAPI_STAMP.write_text(openapi_fingerprint() + "\n")


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
        if is_fresh() and openapi_is_fresh():
            return 0
        print("generated code is stale: run `make protos`", file=sys.stderr)
        return 1
    if "--force" in sys.argv or not is_fresh():
        generate()
        print(f"generated {len(proto_files())} proto files into {GEN.relative_to(ROOT)}/")
    if "--force" in sys.argv or not openapi_is_fresh():
        generate_openapi()
        print(f"generated the OpenAPI document into {OPENAPI.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
