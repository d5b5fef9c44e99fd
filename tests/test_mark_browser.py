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
SAMPLES = "The AE samples are mostly blobs, not digits: nothing makes the codes follow N(0, I)."
SUBMISSIONS = {
    "ada": SAMPLES,
    "bea": SAMPLES.replace("mostly", "largely"),     # a near copy: ada's answer group
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
    from selenium.webdriver.common.action_chains import ActionChains
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
        first = QUESTION.rubric[0]    # the config's items seed the rubric in order
        wait.until(lambda b: b.find_element(By.ID, "mark-points").text == f"{first.points:g} / {QUESTION.points:g}")
        assert "applied" in browser.find_element(By.CSS_SELECTOR, "#rubric li[data-position='1']").get_attribute("class")

        body.send_keys("c")                                   # to the comment box
        comment = browser.switch_to.active_element
        assert comment.get_attribute("id") == "comment"
        comment.send_keys(COMMENT)
        comment.send_keys("1j")                               # keys typed in the box are text, not commands
        comment.send_keys(Keys.BACKSPACE, Keys.BACKSPACE, Keys.ESCAPE)   # Esc leaves the box and saves
        wait.until(lambda b: "version 2" in b.find_element(By.ID, "mark-status").text)

        body.send_keys("j")                                   # next answer: bea, in ada's group
        wait.until(lambda b: b.find_element(By.ID, "submission-name").text == "bea"
                   and "largely" in b.find_element(By.ID, "answer-body").text)
        assert "2 similar answers" in browser.find_element(By.ID, "group").text
        assert browser.find_element(By.ID, "mark-points").text == "unmarked"
        ActionChains(browser).key_down(Keys.SHIFT).send_keys("2").key_up(Keys.SHIFT).perform()   # item 2, whole group
        wait.until(lambda b: "to 2 answers" in b.find_element(By.ID, "message").text)
        assert browser.find_element(By.CSS_SELECTOR, "#rubric li[data-position='2'] .count").text == "2×"

        body.send_keys("j")                                   # grace: another marker comments meanwhile
        wait.until(lambda b: b.find_element(By.ID, "submission-name").text == "grace")
        assert browser.find_element(By.ID, "mark-points").text == "unmarked"
        MarkStore(out, CONFIG, "carol").set_mark("grace", QUESTION.id, comment="carol's comment", base_version=0)
        body.send_keys("c")
        browser.switch_to.active_element.send_keys("my late comment", Keys.ESCAPE)
        wait.until(lambda b: "Not saved" in b.find_element(By.ID, "message").text)
        assert "carol" in browser.find_element(By.ID, "message").text
        assert browser.find_element(By.ID, "comment").get_attribute("value") == "carol's comment"
        expected = "/api/mark - Failed to load resource: the server responded with a status of 409"
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and expected not in e["message"]]
        assert not errors, errors
    finally:
        browser.quit()
        app.send_signal(signal.SIGINT)
        app.wait(timeout=20)

    store = MarkStore(out, CONFIG, "reader")
    items = {item.position: item for item in store.rubric(QUESTION.id)}
    ada, bea = store.mark("ada", QUESTION.id), store.mark("bea", QUESTION.id)
    assert ada.comment == COMMENT and ada.marker == "browser"
    assert ada.items == [items[1].id, items[2].id] and ada.points == items[1].points + items[2].points
    assert bea.items == [items[2].id] and bea.comment == ""
    assert store.mark("grace", QUESTION.id).comment == "carol's comment"   # not overwritten
    assert store.mark("linus", QUESTION.id) is None

    subprocess.run([str(GRADER), "report", str(out)], check=True, capture_output=True, text=True)
    text = pdf_text(out / "ada" / "report.pdf")
    assert items[1].text in text and items[2].text in text
    assert COMMENT in text
    assert COMMENT not in pdf_text(out / "bea" / "report.pdf")
