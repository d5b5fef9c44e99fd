"""The marking app (grader mark) in-process: the token and CSRF guard, applying rubric items,
version conflicts, rubric changes re-scoring, group application, the answer fragment, speed."""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import pytest

with warnings.catch_warnings():   # starlette's TestClient prefers httpx2, which is not packaged here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from grader.config import load_config
from grader.marking.app import TOKEN_HEADER, create_app, is_loopback, loopback_hosts
from grader.marking.store import MarkStore
from grader.records import Answer, SubmissionResult

CONFIG = load_config()
Q1 = CONFIG.questions[0]
TOKEN = "test-token-123"

SAMPLES = ("The reconstructions look almost identical to the inputs, but the samples decoded from "
           "z ~ N(0, I) are mostly not digits, just blurry blobs and strokes. Nothing forces the "
           "AE's codes to follow the prior, so random codes land where the decoder never learned.")
# submission -> its answer to Q1 (None: not found)
ANSWERS = {
    "alpha": SAMPLES,
    "bravo": SAMPLES.replace("almost identical", "nearly identical"),
    "charlie": "Overfitting: with more epochs the images became similar and hard to recognise, $\\beta=0$.",
    "delta": None,
    "echo": "<script>alert('x')</script> **bold** " + "word " * (Q1.limit + 5),
}


def write_result(out: Path, submission: str, q1_text: str | None) -> None:
    answers = []
    for q in CONFIG.questions:
        text = q1_text if q.id == Q1.id else f"{submission} answers {q.id}"
        words = len((text or "").split())
        answers.append(Answer(id=q.id, found=text is not None, text=text or "", words=words, limit=q.limit,
                              max_points=q.points, over_limit=words > q.limit,
                              note="" if text is not None else "question not found in the notebook"))
    result = SubmissionResult(submission=submission, status="graded", score=9.0,
                              max_score=CONFIG.max_auto_points, answers=answers)
    (out / submission).mkdir(parents=True, exist_ok=True)
    (out / submission / "result.json").write_text(result.model_dump_json())


@pytest.fixture()
def out(tmp_path) -> Path:
    out = tmp_path / "out"
    for submission, text in ANSWERS.items():
        write_result(out, submission, text)
    return out


def client(out: Path, **options) -> TestClient:
    return TestClient(create_app(out, CONFIG, "alice", TOKEN, **options), follow_redirects=False)


WRITE = {TOKEN_HEADER: TOKEN}


def item_ids(c: TestClient, question: str = Q1.id) -> list[int]:
    return [item["id"] for item in c.get(f"/api/question/{question}").json()["items"]]


def mark_of(out: Path, submission: str, question: str = Q1.id):
    return MarkStore(out, CONFIG, "reader").mark(submission, question)


# --- access -------------------------------------------------------------------------------------


def test_off_loopback_every_request_needs_the_token(out):
    c = client(out, token_for_reads=True)
    for path in ("/", f"/q/{Q1.id}", f"/api/answer/{Q1.id}/alpha", "/static/mark.js"):
        assert c.get(path).status_code == 403, path
    assert c.get("/?token=wrong").status_code == 403
    assert c.get("/", headers={TOKEN_HEADER: "wrong"}).status_code == 403
    # the right token in the URL: kept in a cookie, and the URL loses it
    landing = c.get(f"/q/{Q1.id}?token={TOKEN}&s=bravo")
    assert landing.status_code == 303
    assert landing.headers["location"] == f"/q/{Q1.id}?s=bravo"
    cookie = landing.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and TOKEN.lower() in cookie
    page = c.get(landing.headers["location"])
    assert page.status_code == 200 and "bravo" in page.text
    c.cookies.clear()
    assert c.get("/").status_code == 403
    assert c.get("/", headers={TOKEN_HEADER: TOKEN}).status_code == 200


def test_writes_need_the_token_header_even_on_loopback(out):
    c = client(out)
    item = item_ids(c)[0]
    assert c.get("/").status_code == 200     # pages are readable on loopback
    body = {"item": item, "submissions": ["alpha"]}
    assert c.post("/api/apply", json=body).status_code == 403
    # the cookie alone is refused: SameSite ignores ports, so any local page would send it
    c.get(f"/?token={TOKEN}")
    assert c.cookies, "the token cookie was not set"
    refused = c.post("/api/apply", json=body)
    assert refused.status_code == 403 and "X-Grader-Token" in refused.json()["error"]
    # a form post from another origin, even one carrying the token, is refused
    assert c.post("/api/apply", json=body, headers={**WRITE, "Origin": "http://127.0.0.1:9999"}).status_code == 403
    assert c.post("/api/apply", json=body, headers={**WRITE, "Origin": "null"}).status_code == 403
    assert c.post("/api/mark", data={"question": Q1.id, "submission": "alpha", "comment": "forged",
                                     "base_version": "0"}).status_code == 403
    assert mark_of(out, "alpha") is None, "a refused request changed the database"
    accepted = c.post("/api/apply", json=body, headers={**WRITE, "Origin": "http://testserver"})
    assert accepted.status_code == 200


def test_a_foreign_host_header_is_refused_on_loopback(out):
    """A DNS-rebinding page reaches 127.0.0.1 under its own name: its Host header gives it away."""
    port = 8765
    c = TestClient(create_app(out, CONFIG, "alice", TOKEN, allowed_hosts=loopback_hosts(port)),
                   base_url=f"http://127.0.0.1:{port}")
    assert c.get("/").status_code == 200
    assert c.get("/", headers={"host": f"localhost:{port}"}).status_code == 200
    assert c.get("/", headers={"host": f"attacker.example:{port}"}).status_code == 403
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("course.example.org")


def test_pages_carry_security_headers(out):
    c = client(out)
    for response in (c.get("/"), c.post("/api/apply", json={})):
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert response.headers["x-frame-options"] == "DENY"


# --- pages ------------------------------------------------------------------------------------------


def test_index_counts_marked_stale_and_unmarked(out):
    c = client(out)
    item = item_ids(c)[0]
    c.post("/api/apply", json={"item": item, "submissions": ["alpha", "bravo"]}, headers=WRITE)
    write_result(out, "bravo", "A different answer written after the marking.")
    c = client(out)   # a restart re-syncs the answers: bravo's mark is stale now
    page = c.get("/").text
    row = page[page.index(f'href="/q/{Q1.id}"'):].split("</tr>")[0]
    cells = [cell.split(">")[-1] for cell in row.split("</td>")[2:8]]
    assert cells == [f"{Q1.points:g}", "5", "1", "1", "3", "1"]   # points, answers, marked, stale, unmarked, missing


def test_question_page_lists_every_answer_and_renders_no_answer_text(out):
    page = client(out).get(f"/q/{Q1.id}?s=charlie")
    assert page.status_code == 200
    for submission in ANSWERS:
        assert f">{submission}<" in page.text
    assert "blurry blobs" not in page.text   # answers come one at a time from /api/answer
    assert '"current": 2' in page.text


def test_answer_fragment_is_sanitized_with_flags_and_evidence(out):
    c = client(out)
    echo = c.get(f"/api/answer/{Q1.id}/echo").json()
    assert "<script>" not in echo["answer_html"] and "&lt;script&gt;" in echo["answer_html"]
    assert "<strong>bold</strong>" in echo["answer_html"]
    assert echo["over_limit"] and echo["words"] > Q1.limit
    assert "Evidence" in echo["evidence_html"]
    charlie = c.get(f"/api/answer/{Q1.id}/charlie").json()
    assert "<svg" in charlie["answer_html"]            # maths drawn as the PDF draws it
    missing = c.get(f"/api/answer/{Q1.id}/delta").json()
    assert not missing["found"] and "question not found" in missing["answer_html"]
    rows = {r["submission"]: r for r in c.get(f"/api/question/{Q1.id}").json()["rows"]}
    assert rows["delta"]["found"] is False and rows["echo"]["over_limit"] is True
    assert c.get(f"/api/answer/{Q1.id}/nobody").status_code == 400
    assert c.get("/q/Q99").status_code == 400


# --- marking ----------------------------------------------------------------------------------------


def test_apply_and_remove_an_item(out):
    c = client(out)
    first, second = item_ids(c)[:2]
    reply = c.post("/api/apply", json={"item": first, "submissions": ["alpha"]}, headers=WRITE)
    assert reply.status_code == 200
    (mark,) = reply.json()["marks"]
    assert mark["items"] == [first] and mark["points"] == CONFIG.questions[0].rubric[0].points
    assert mark["marker"] == "alice" and mark["version"] == 1
    c.post("/api/apply", json={"item": second, "submissions": ["alpha"]}, headers=WRITE)
    c.post("/api/apply", json={"item": first, "submissions": ["alpha"], "applied": False}, headers=WRITE)
    stored = mark_of(out, "alpha")
    assert stored.items == [second] and stored.points == CONFIG.questions[0].rubric[1].points
    unknown = c.post("/api/apply", json={"item": first, "submissions": ["nobody"]}, headers=WRITE)
    assert unknown.status_code == 400 and "nobody" in unknown.json()["error"]


def test_comment_and_adjustment_conflict_is_reported_not_overwritten(out):
    c = client(out)
    saved = c.post("/api/mark", json={"question": Q1.id, "submission": "alpha", "comment": "first marker",
                                      "adjustment": 0.5, "base_version": 0}, headers=WRITE)
    assert saved.status_code == 200 and saved.json()["mark"]["version"] == 1
    # a second marker's page still shows version 0
    late = c.post("/api/mark", json={"question": Q1.id, "submission": "alpha", "comment": "second marker",
                                     "base_version": 0}, headers=WRITE)
    assert late.status_code == 409
    assert "alice" in late.json()["error"] and late.json()["mark"]["comment"] == "first marker"
    assert mark_of(out, "alpha").comment == "first marker"
    out_of_range = c.post("/api/mark", json={"question": Q1.id, "submission": "alpha", "adjustment": 99,
                                             "base_version": 1}, headers=WRITE)
    assert out_of_range.status_code == 400 and mark_of(out, "alpha").adjustment == 0.5


def test_changing_an_items_points_rescores_and_deleting_it_removes_it(out):
    c = client(out)
    first = item_ids(c)[0]
    c.post("/api/apply", json={"item": first, "submissions": ["alpha", "bravo"]}, headers=WRITE)
    changed = c.post(f"/api/items/{first}", json={"points": 0.5, "text": "Mostly not digits"}, headers=WRITE)
    assert changed.status_code == 200 and changed.json()["item"]["points"] == 0.5
    assert mark_of(out, "alpha").points == 0.5 and mark_of(out, "bravo").points == 0.5
    assert c.post(f"/api/items/{first}", json={"points": Q1.points + 1}, headers=WRITE).status_code == 400
    added = c.post("/api/items", json={"question": Q1.id, "text": "Cites the KL term", "points": 1}, headers=WRITE)
    new = added.json()["item"]["id"]
    assert new in item_ids(c)
    assert "Cites the KL term" in c.get(f"/q/{Q1.id}").text
    gone = c.post(f"/api/items/{first}/delete", headers=WRITE)
    assert gone.json() == {"answers_left": 2}
    assert first not in item_ids(c) and mark_of(out, "alpha").points == 0


def test_clear_returns_an_answer_to_unmarked(out):
    c = client(out)
    c.post("/api/apply", json={"item": item_ids(c)[0], "submissions": ["alpha"]}, headers=WRITE)
    assert c.post("/api/clear", json={"question": Q1.id, "submission": "alpha"}, headers=WRITE).status_code == 200
    assert mark_of(out, "alpha") is None


def test_an_item_applied_to_a_whole_group(out):
    c = client(out)
    rows = {r["submission"]: r for r in c.get(f"/api/question/{Q1.id}").json()["rows"]}
    assert rows["alpha"]["group"] == rows["bravo"]["group"] is not None
    assert rows["alpha"]["group"] != rows["charlie"]["group"]
    members = [s for s, r in rows.items() if r["group"] == rows["alpha"]["group"]]
    assert sorted(members) == ["alpha", "bravo"]
    page = c.get(f"/q/{Q1.id}").text
    assert f'g{rows["alpha"]["group"]}' in page   # the list shows the group
    item = item_ids(c)[0]
    reply = c.post("/api/apply", json={"item": item, "submissions": members}, headers=WRITE)
    assert [m["submission"] for m in reply.json()["marks"]] == members
    assert mark_of(out, "alpha").items == [item] and mark_of(out, "bravo").items == [item]
    assert mark_of(out, "charlie") is None


@pytest.mark.slow
def test_a_question_page_of_500_submissions_opens_within_200_ms(tmp_path):
    out = tmp_path / "out"
    words = ["the", "samples", "are", "blurry", "because", "codes", "do", "not", "follow", "the", "prior", "kl", "term",
             "smooth", "latent"]
    for i in range(500):
        text = " ".join(words[(i + j) % len(words)] for j in range(40 + i % 60))
        write_result(out, f"s{i:04d}", text)
    c = client(out)
    c.app.state.marking.warm()   # as `grader mark` does before printing its URL
    c.post("/api/apply", json={"item": item_ids(c)[0], "submissions": [f"s{i:04d}" for i in range(0, 500, 3)]},
           headers=WRITE)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        page = c.get(f"/q/{Q1.id}")
        times.append(time.perf_counter() - start)
        assert page.status_code == 200
    assert page.text.count('<li data-index="') == 500
    assert statistics.median(times) <= 0.2, f"question page took {statistics.median(times) * 1000:.0f} ms"


def test_the_landing_url_keeps_other_query_parameters(out):
    c = client(out, token_for_reads=True)
    landing = c.get(f"/q/{Q1.id}?s=echo&token={TOKEN}")
    assert urlsplit(landing.headers["location"]).query == "s=echo"


def notebook(outputs: list[dict]) -> str:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("show_samples(ae, n=20)", outputs=[nbformat.from_dict(o) for o in outputs])]
    return nbformat.writes(nb)


def test_the_fragment_shows_saved_outputs_beside_the_rerun_and_says_they_differ(out):
    stream = {"output_type": "stream", "name": "stdout"}
    (out / "alpha" / "submitted.ipynb").write_text(notebook([{**stream, "text": "mean confidence 0.97\n"}]))
    (out / "alpha" / "executed.ipynb").write_text(notebook([{**stream, "text": "mean confidence 0.41\n"}]))
    evidence = client(out).get(f"/api/answer/{Q1.id}/alpha").json()["evidence_html"]
    assert "show_samples(ae, n=20)" in evidence
    assert "mean confidence 0.97" in evidence and "mean confidence 0.41" in evidence
    assert "saved ≠ re-run" in evidence and "text differs" in evidence
