"""The command line of the contract, run as real processes."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import requests

from tests.support import ROOT, make_image, submit_job, wait_for


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
    # Every caption is printed as it is made (also those folded into one coalesced update).
    live = [line for line in run.stderr.replace("\r", "\n").splitlines() if line.startswith("  c")]
    assert sorted(line.split(":")[0].strip() for line in live) == ["c0.png", "c1.png", "c2.png"]
    assert "upload" in run.stderr  # the upload's own progress bar


def test_caption_without_token_is_a_clear_error(env, stack, tmp_path):
    path = str(make_image(tmp_path / "x.png"))
    run = cli({**{k: v for k, v in env.items() if k != "SKALD_TOKEN"}, "SKALD_URL": stack},
              "caption", path)
    assert run.returncode == 2 and "SKALD_TOKEN" in run.stderr


def watching(env, stack, user: dict, paths: list[str]) -> tuple[subprocess.Popen, str]:
    """``caption PATHS --watch`` running, once its job has captioned its first image."""
    proc = subprocess.Popen([sys.executable, "-m", "web", "caption", *paths, "--watch"],
                            env={**env, "SKALD_TOKEN": user["token"], "SKALD_URL": stack},
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    headers = user["headers"]
    task_id = wait_for(lambda: requests.get(f"{stack}/api/jobs", headers=headers).json()["jobs"], 30,
                       what="job submitted")[0]["task_id"]
    wait_for(lambda: requests.get(f"{stack}/api/jobs/{task_id}", headers=headers).json()["current"] >= 1,
             60, what="first image")
    return proc, task_id


def test_ctrl_c_offers_to_cancel(env, stack, users, tmp_path):
    user = users("cli-canceller")
    headers = user["headers"]
    paths = [str(make_image(tmp_path / f"k{i}.png", i, (2400, 1800))) for i in range(40)]
    proc, task_id = watching(env, stack, user, paths)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate("y\n", timeout=60)
    assert "Traceback" not in err
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


def test_ctrl_c_and_no_leaves_the_job_running_and_says_how_to_watch(env, stack, users, tmp_path):
    user = users("cli-leaver")
    paths = [str(make_image(tmp_path / f"n{i}.png", i, (2400, 1800))) for i in range(30)]
    proc, task_id = watching(env, stack, user, paths)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate("n\n", timeout=60)
    assert proc.returncode == 130, out + err
    assert f"python -m web watch {task_id}" in err and "goes on" in err
    assert "Traceback" not in err
    # It goes on, and `watch` re-attaches to it until its ending.
    again = cli({**env, "SKALD_TOKEN": user["token"], "SKALD_URL": stack}, "watch", task_id)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "done: 30 captions, 0 failed" in again.stdout
    assert sum(1 for line in again.stdout.splitlines() if "\t" in line) == 30


def test_watch_a_cancelled_job_exits_3(env, stack, users, tmp_path):
    user = users("cli-watch3")
    task_id = submit_job(stack, user, [make_image(tmp_path / f"q{i}.png", i, (2400, 1800)) for i in range(30)])["task_id"]
    requests.post(f"{stack}/api/jobs/{task_id}/cancel", headers=user["headers"], timeout=10)
    run = cli({**env, "SKALD_TOKEN": user["token"], "SKALD_URL": stack}, "watch", task_id)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "cancelled after" in run.stdout


def test_watch_errors_are_one_plain_sentence(env, stack, users, tmp_path):
    from devstack import free_port

    user = users("cli-watch-errors")
    theirs = submit_job(stack, users("cli-someone-else"), [make_image(tmp_path / "s.png")])["task_id"]
    cases = [
        ({"SKALD_TOKEN": user["token"], "SKALD_URL": f"http://127.0.0.1:{free_port()}"},
         ["watch", theirs], "cannot reach Skald"),
        ({"SKALD_TOKEN": "sk_not-a-real-token", "SKALD_URL": stack}, ["watch", theirs], "did not accept the token"),
        ({"SKALD_TOKEN": user["token"], "SKALD_URL": stack}, ["watch", theirs], "no task"),
        ({"SKALD_TOKEN": user["token"], "SKALD_URL": stack}, ["watch", "not-a-uuid"], "cannot watch"),
        ({"SKALD_TOKEN": "sk_not-a-real-token", "SKALD_URL": stack},
         ["caption", str(make_image(tmp_path / "t.png"))], "did not accept the token"),
        ({"SKALD_TOKEN": user["token"], "SKALD_URL": f"http://127.0.0.1:{free_port()}"},
         ["caption", str(make_image(tmp_path / "u.png"))], "cannot reach Skald"),
    ]
    for extra, args, words in cases:
        run = cli({**env, **extra}, *args)
        assert run.returncode == 1, (args, run.stdout, run.stderr)
        lines = [line for line in run.stderr.replace("\r", "\n").splitlines()
                 if line.strip() and "img" not in line and "upload" not in line]
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in run.stderr, (args, run.stderr)
