"""The command line of the contract, run as real processes."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import requests

from tests.support import ROOT, make_image, wait_for


def cli(env, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "web", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, **kw)


def test_user_add_prints_token_last_and_refuses_duplicates(env, stack):
    first = cli(env, "user", "add", "cli-user", "--password", "pw123456")
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip().splitlines()[-1]
    assert token.startswith("sk_") and " " not in token
    assert requests.get(f"{stack}/api/jobs", headers={"Authorization": f"Bearer {token}"}).ok
    again = cli(env, "user", "add", "cli-user")
    assert again.returncode == 1
    assert len(again.stderr.strip().splitlines()) == 1 and "exists" in again.stderr
    revoked = cli(env, "user", "revoke", "cli-user")
    assert revoked.returncode == 0
    assert requests.get(f"{stack}/api/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    bad = cli(env, "user", "add", "no spaces allowed")
    assert bad.returncode == 1 and "user name" in bad.stderr


def test_caption_watch_shows_progress_until_the_end(env, stack, users, tmp_path):
    user = users("cli-watcher")
    paths = [str(make_image(tmp_path / f"c{i}.png", i)) for i in range(3)]
    run = cli({**env, "SKALD_TOKEN": user["token"], "SKALD_URL": stack},
              "caption", *paths, "--watch")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "done: 3 captions, 0 failed" in run.stdout
    assert sum(1 for line in run.stdout.splitlines() if line.startswith("c") and "\t" in line) == 3
    assert "img" in run.stderr  # the progress bar (tqdm) draws on stderr


def test_caption_without_token_is_a_clear_error(env, stack, tmp_path):
    path = str(make_image(tmp_path / "x.png"))
    run = cli({**{k: v for k, v in env.items() if k != "SKALD_TOKEN"}, "SKALD_URL": stack},
              "caption", path)
    assert run.returncode == 2 and "SKALD_TOKEN" in run.stderr


def test_ctrl_c_offers_to_cancel(env, stack, users, tmp_path):
    user = users("cli-canceller")
    paths = [str(make_image(tmp_path / f"k{i}.png", i, (2400, 1800))) for i in range(40)]
    proc = subprocess.Popen([sys.executable, "-m", "web", "caption", *paths, "--watch"],
                            env={**env, "SKALD_TOKEN": user["token"], "SKALD_URL": stack},
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    headers = user["headers"]
    jobs = wait_for(lambda: requests.get(f"{stack}/api/jobs", headers=headers).json()["jobs"], 30,
                    what="job submitted")
    task_id = jobs[0]["task_id"]
    wait_for(lambda: requests.get(f"{stack}/api/jobs/{task_id}", headers=headers).json()["current"] >= 1,
             60, what="first image")
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate("y\n", timeout=60)
    assert "Cancel job" in out + err
    assert proc.returncode == 3, out + err
    assert "cancelled after" in out
    snap = requests.get(f"{stack}/api/jobs/{task_id}", headers=headers).json()
    assert snap["state"] == "REVOKED" and snap["current"] < 40


def test_served_connections_send_without_nagle_delay():
    """`web serve` (gevent) turns Nagle's algorithm off on every accepted connection."""
    import socket

    from web.cli import _no_delay_handler

    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()):
        conn, address = server.accept()
        with conn:
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
            handler = _no_delay_handler()(conn, address, server=None)
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            handler.rfile.close()
