"""A real browser marks an answer: `grader mark` runs as the user runs it, headless Chromium
(Debian's chromium + chromium-driver, through Selenium) applies a rubric item with its number key
and types a comment, and `grader report` then shows both in the student's PDF.

Outside CI a machine without Chromium skips this test (saying what to install); under CI
(`CI` set) a missing browser fails it, so the check cannot silently stop running."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pypdf import PdfReader

from grader.config import load_config
from grader.marking.store import MarkStore
from grader.records import Answer, SubmissionResult

CONFIG = load_config()
QUESTION = CONFIG.questions[0]
GRADER = Path(sys.executable).with_name("grader")
COMMENT = "Good observation; say why the prior misses the codes."
SUBMISSIONS = {
    "ada": "The AE samples are mostly blobs, not digits: nothing makes the codes follow N(0, I).",
    "grace": "Samples look like digits but blurry.",
    "linus": "I am not sure what the samples show.",
}
URL_LINE = re.compile(r"open (http://127\.0\.0\.1:\d+/\?token=[\w-]+)")

pytestmark = pytest.mark.slow


def _require(what: str, found: bool) -> None:
    if found:
        return
    reason = f"{what} is not installed (apt-get install chromium chromium-driver; scripts/bootstrap.sh does it as root)"
    if os.environ.get("CI"):
        pytest.fail(f"under CI the browser test must run: {reason}")
    pytest.skip(reason)


def browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    _require("chromium", chromium is not None)
    _require("chromedriver", driver is not None)
    try:
        import selenium  # noqa: F401
    except ImportError:
        _require("selenium (pip install -e '.[test]')", False)
    return chromium, driver


def write_out(out: Path) -> None:
    for submission, text in SUBMISSIONS.items():
        answers = [Answer(id=q.id, found=True, text=text if q is QUESTION else f"{submission} on {q.id}",
                          words=len(text.split()), limit=q.limit, max_points=q.points) for q in CONFIG.questions]
        result = SubmissionResult(submission=submission, status="graded", score=12.0,
                                  max_score=CONFIG.max_auto_points, answers=answers, graded_at="2026-11-25T14:16:00+00:00")
        (out / submission).mkdir(parents=True)
        (out / submission / "result.json").write_text(result.model_dump_json())


def start_marking_app(out: Path) -> tuple[subprocess.Popen, str]:
    """`grader mark OUT --port 0`, and the URL it prints."""
    app = subprocess.Popen([str(GRADER), "mark", str(out), "--port", "0", "--marker", "browser"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = app.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = URL_LINE.search(line)
        if match:
            return app, match.group(1)
    app.kill()
    raise AssertionError("grader mark printed no URL:\n" + "".join(lines))


def chrome(chromium: str, driver: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


def pdf_text(path: Path) -> str:
    return " ".join(" ".join(page.extract_text() or "" for page in PdfReader(path).pages).split())


def test_a_browser_marks_an_answer_and_the_pdf_shows_it(tmp_path):
    chromium, driver_path = browser_paths()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    out = tmp_path / "out"
    write_out(out)
    app, url = start_marking_app(out)
    browser = chrome(chromium, driver_path)
    try:
        wait = WebDriverWait(browser, 20)
        browser.get(url)
        assert "token=" not in browser.current_url   # moved into the cookie
        browser.find_element(By.CSS_SELECTOR, f'a[href="/q/{QUESTION.id}"]').click()
        wait.until(lambda b: b.find_element(By.ID, "submission-name").text == "ada"
                   and "nothing makes the codes" in b.find_element(By.ID, "answer-body").text)
        assert "Evidence" in browser.find_element(By.ID, "evidence").text

        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("1")                                   # the first rubric item
        first = QUESTION.rubric[0]
        wait.until(lambda b: b.find_element(By.ID, "mark-points").text == f"{first.points:g} / {QUESTION.points:g}")
        assert "applied" in browser.find_element(By.CSS_SELECTOR, "#rubric li[data-position='1']").get_attribute("class")

        body.send_keys("c")                                   # to the comment box
        comment = browser.switch_to.active_element
        assert comment.get_attribute("id") == "comment"
        comment.send_keys(COMMENT)
        comment.send_keys("1j")                               # keys typed in the box are text, not commands
        comment.send_keys(Keys.BACKSPACE, Keys.BACKSPACE, Keys.ESCAPE)   # Esc leaves the box and saves
        wait.until(lambda b: "version 2" in b.find_element(By.ID, "mark-status").text)

        body.send_keys("j")                                   # next answer
        wait.until(lambda b: b.find_element(By.ID, "submission-name").text == "grace")
        assert browser.find_element(By.ID, "mark-points").text == "unmarked"
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        browser.quit()
        app.send_signal(signal.SIGINT)
        app.wait(timeout=20)

    mark = MarkStore(out, CONFIG, "reader").mark("ada", QUESTION.id)
    assert mark is not None and mark.comment == COMMENT and mark.marker == "browser"
    assert mark.points == first.points and len(mark.items) == 1
    assert MarkStore(out, CONFIG, "reader").mark("grace", QUESTION.id) is None

    subprocess.run([str(GRADER), "report", str(out)], check=True, capture_output=True, text=True)
    text = pdf_text(out / "ada" / "report.pdf")
    assert first.text in text
    assert COMMENT in text
    assert COMMENT not in pdf_text(out / "grace" / "report.pdf")
