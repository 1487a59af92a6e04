"""``python -m bridge``: run the bridge (active/standby under a Redis lease)."""
from __future__ import annotations

import logging
import signal
import sys

from settings import SettingsError, load_settings


def main(bridge_class: type | None = None) -> int:
    """Run until SIGTERM or SIGINT (``bridge_class``: a subclass of ``bridge.service.Bridge``)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from bridge.service import Bridge
    from gcpolicy import keep_pauses_short

    keep_pauses_short()  # 100 000 tracked tasks: keep full GC pauses short
    bridge = (bridge_class or Bridge)(settings)
    signal.signal(signal.SIGTERM, lambda *_: bridge.stop())
    signal.signal(signal.SIGINT, lambda *_: bridge.stop())
    bridge.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
