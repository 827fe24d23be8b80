"""python -m etax_platform.apidocs build [--out DIR]   # what `make protos` runs
python -m etax_platform.apidocs check [--dir DIR]   # what `make lint` runs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from etax_platform.apidocs.document import GEN_DIR, PLUGIN, build, check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the OpenAPI document of the public JSON API")
    parser.add_argument("command", choices=["build", "check"])
    parser.add_argument("--dir", type=Path, default=GEN_DIR, help="where the document is")
    parser.add_argument("--plugin", type=Path, default=PLUGIN, help="protoc-gen-openapiv2")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(f"OpenAPI document: {build(args.dir, args.plugin)}")
        return 0
    problems = check(args.dir, args.plugin)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"OpenAPI document OK: {args.dir}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
