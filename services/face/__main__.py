"""`python -m services.face`: the face broker on ETAX_FACE_PORT (its default: the topology)."""

from __future__ import annotations

from etax_platform.observability import configure_logging
from services.face.app import build
from services.face.settings import FaceSettings


def main() -> None:
    settings = FaceSettings()
    configure_logging(settings.platform.log_level, "face")
    build(settings).serve_until_signalled()


if __name__ == "__main__":
    main()
