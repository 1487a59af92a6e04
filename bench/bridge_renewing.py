"""What-if (bench/whatif.py only): ``python -m bridge`` that renews its lease while loading.

``Bridge._run_active`` loads the stored tasks before it starts the lease
renewer, so a load longer than the lease (3 s) loses it. Here a helper thread
renews the lease during ``_load_state`` -- the lever proposed for
bridge/service.py (start the renewer first) -- nothing else changes.
"""
import sys
import threading

from bridge.service import Bridge

_load = Bridge._load_state


def _load_renewing(self, *args, **kwargs):
    done = threading.Event()

    def renew():
        while not done.wait(self.settings.leader_ttl_seconds / 3):
            try:
                self.lease.renew()
            except Exception:  # noqa: BLE001 - the real renewer reports problems
                pass
    thread = threading.Thread(target=renew, name="load-renew", daemon=True)
    thread.start()
    try:
        return _load(self, *args, **kwargs)
    finally:
        done.set()


Bridge._load_state = _load_renewing

if __name__ == "__main__":
    from bridge.__main__ import main

    sys.exit(main())
