"""`python -m services.face`: the face broker on ETAX_FACE_PORT (its default: the topology)."""

from __future__ import annotations

from etax_platform.observability import start_process
from services.face.app import build
from services.face.settings import FaceSettings


def main() -> None:
    settings = FaceSettings()
    stop = start_process(settings, "face")
    try:
        build(settings).serve_until_signalled()
    finally:
        stop()


if __name__ == "__main__":
    main()
