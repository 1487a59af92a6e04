"""``python -m web ...``: serve, user, maintenance, caption, watch."""
import sys

if sys.argv[1:2] == ["serve"]:
    from settings import load_settings

    if load_settings().web_async_mode == "gevent":
        # gevent must patch the standard library before anything else imports it.
        from gevent import monkey

        monkey.patch_all()

from web.cli import run  # noqa: E402

run()
