"""`grader mark` killed with SIGKILL while a marker is saving: every mark the server acknowledged
is there after a restart (each is committed before the response is sent)."""

from __future__ import annotations

import json
import os
import signal
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.test_mark_browser import CONFIG, SUBMISSIONS, start_marking_app, write_out

pytestmark = pytest.mark.slow


def post(base: str, token: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "X-Grader-Token": token, "Origin": base})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def get(base: str, token: str, path: str) -> dict:
    with urllib.request.urlopen(f"{base}{path}?token={token}", timeout=10) as response:
        return json.load(response)


def split(url: str) -> tuple[str, str]:
    base, _, token = url.partition("/?token=")
    return base, token


def test_kill_9_of_the_marking_app_loses_no_acknowledged_mark(tmp_path: Path):
    out = tmp_path / "out"
    write_out(out)
    app, url = start_marking_app(out)
    base, token = split(url)
    question = CONFIG.questions[1].id
    submissions = sorted(SUBMISSIONS)
    acknowledged: dict[str, str] = {}     # submission -> last comment the server confirmed
    versions = {s: 0 for s in submissions}
    stop = threading.Event()

    def marker() -> None:
        i = 0
        while not stop.is_set():
            submission = submissions[i % len(submissions)]
            comment = f"comment {i}"
            try:
                mark = post(base, token, "/api/mark", {"question": question, "submission": submission,
                                                       "comment": comment, "base_version": versions[submission]})["mark"]
            except (urllib.error.URLError, ConnectionError, OSError):
                return                      # the server is gone: this write was never acknowledged
            versions[submission] = mark["version"]
            acknowledged[submission] = comment
            i += 1

    thread = threading.Thread(target=marker)
    thread.start()
    try:
        while len(acknowledged) < len(submissions) or sum(versions.values()) < 40:
            if not thread.is_alive():
                raise AssertionError("the marker stopped before the kill")
            thread.join(0.01)
        os.kill(app.pid, signal.SIGKILL)       # mid-marking: the thread is still sending
        app.wait()
    finally:
        stop.set()
        thread.join(15)
        if app.poll() is None:
            app.kill()
    assert not thread.is_alive()

    app, url = start_marking_app(out)          # the restart
    try:
        base, token = split(url)
        rows = {r["submission"]: r for r in get(base, token, f"/api/question/{question}")["rows"]}
    finally:
        app.send_signal(signal.SIGINT)
        app.wait(20)
    for submission, comment in acknowledged.items():
        mark = rows[submission]["mark"]
        assert mark is not None, submission
        # the acknowledged write, or one sent later that committed before the kill landed
        assert int(mark["comment"].split()[1]) >= int(comment.split()[1]), (submission, mark, comment)
        assert mark["version"] >= versions[submission]
