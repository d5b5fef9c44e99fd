"""`grader mark OUT`: the marking page, a small local web app over OUT's marking database.

Marking goes question by question across all submissions: one answer at a time, rendered as the
PDF renders it, beside the evidence the config names for that question; rubric items applied
with number keys (Shift+number: to the answer's whole group), a free adjustment and a comment.
Every change is one request and one committed transaction in grader.marking.store, so a browser
closed or an app killed loses nothing that was acknowledged.

Why FastAPI + uvicorn: typed request bodies (pydantic, as the rest of the grader) and a real
HTTP server in two small pure-Python-installable packages; Starlette's TestClient tests the
same app in-process.

Access (see `AccessGuard`): a random token is printed in the URL at start and kept in an
HttpOnly, SameSite=Strict cookie. Off loopback, every request needs it. On loopback, pages are
readable without it but only with our own Host header (a DNS-rebinding page names another
host), and every write needs it in the X-Grader-Token header: not the cookie alone, because
SameSite ignores ports, so a page served by any other program on localhost is "same-site" and
would send the cookie along with a forged form post. A page of another origin cannot set that
header without a CORS preflight, which this app never grants, nor read the token from our pages.

Speed: a question page is one read of its answers, its marks, its rubric and its stored groups
(a handful of queries) and renders no answer text; the current answer, rendered, and its
evidence (figures as data: URIs) come from /api/answer when the marker moves to it.
"""

from __future__ import annotations

import hashlib
import html
import ipaddress
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ..config import AssignmentConfig, Question
from ..errors import GraderError
from ..mathtext import markdown_to_html
from ..paths import TEMPLATES_DIR
from ..records import Mark, SubmissionResult
from ..text import format_decimal
from .final import RESULT_JSON, load_results
from .store import MarkConflict, MarkingError, MarkStore

MARK_TEMPLATES = TEMPLATES_DIR / "mark"
STATIC_FILES = {"mark.js": "text/javascript; charset=utf-8", "mark.css": "text/css; charset=utf-8"}
TOKEN_HEADER = "x-grader-token"
MAX_COMMENT_CHARS = 20_000
MAX_BATCH = 100_000   # submissions in one apply request (a whole class's group)
# Evidence figures are data: URIs; student-written SVG maths carries inline style attributes.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                           "base-uri 'none'; frame-ancestors 'none'")


# --- request bodies ---------------------------------------------------------------------------


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApplyRequest(Body):
    item: int
    submissions: list[str] = Field(min_length=1, max_length=MAX_BATCH)
    applied: bool = True


class MarkRequest(Body):
    question: str
    submission: str
    adjustment: float | None = None
    comment: str | None = Field(default=None, max_length=MAX_COMMENT_CHARS)
    base_version: int = Field(ge=0)    # the mark's version the marker saw (0: unmarked)


class ClearRequest(Body):
    question: str
    submission: str


class NewItemRequest(Body):
    question: str
    text: str = Field(max_length=2_000)
    points: float


class ItemChangeRequest(Body):
    text: str | None = Field(default=None, max_length=2_000)
    points: float | None = None


# --- what the pages show ----------------------------------------------------------------------


class AnswerRow(BaseModel):
    """One answer in a question's list: what the page needs to show and navigate it."""

    submission: str
    folder: str
    found: bool
    empty: bool
    words: int
    limit: int
    over_limit: bool
    note: str
    group: int | None = None         # its answer group's id (None: groups not available)
    group_size: int = 1
    representative: bool = False
    mark: Mark | None = None

    @property
    def flags(self) -> list[str]:
        flags = []
        if not self.found:
            flags.append("missing")
        elif self.empty:
            flags.append("empty")
        if self.over_limit:
            flags.append("over the limit")
        if self.mark is not None and self.mark.stale:
            flags.append("stale")
        return flags

    @property
    def state(self) -> str:
        if self.mark is None:
            return "unmarked"
        return "stale" if self.mark.stale else "marked"


class QuestionProgress(BaseModel):
    question: Question
    answers: int
    marked: int
    stale: int
    unmarked: int
    missing: int


def _answer_groups_function() -> Callable | None:
    """grader.marking.groups.answer_groups when that module is installed (scikit-learn)."""
    try:
        from .groups import answer_groups
    except ImportError:
        return None
    return answer_groups


def _same_token(given: str | None, token: str) -> bool:
    return given is not None and secrets.compare_digest(given.encode("utf-8", "replace"), token.encode())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_hosts(port: int) -> set[str]:
    """The Host headers a browser sends to this app on loopback."""
    return {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")}


# --- the access guard -------------------------------------------------------------------------


class AccessGuard:
    """Pure ASGI middleware: the token, the Host check and the security headers (module docstring)."""

    def __init__(self, app, token: str, token_for_reads: bool, allowed_hosts: set[str] | None) -> None:
        self.app = app
        self.token = token
        self.token_for_reads = token_for_reads
        self.allowed_hosts = allowed_hosts
        # Cookies ignore ports: a name of its own per token keeps two apps on one host apart.
        self.cookie = "grader_mark_" + hashlib.sha256(token.encode()).hexdigest()[:12]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            return await self._with_headers(refusal)(scope, receive, send)
        if request.method in ("GET", "HEAD") and "token" in request.query_params:
            return await self._with_headers(self._keep_token(request))(scope, receive, send)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + self._security_headers()
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, request: Request) -> Response | None:
        host = request.headers.get("host", "")
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            return self._forbidden(f"this marking app answers only to {', '.join(sorted(self.allowed_hosts))}, "
                                   f"not to Host {host!r}")
        if request.method not in ("GET", "HEAD"):
            if not _same_token(request.headers.get(TOKEN_HEADER), self.token):
                return self._forbidden("a change needs the app's token in the X-Grader-Token header "
                                       "(the marking page sends it; another web page cannot)")
            origin = request.headers.get("origin")
            if origin and origin != "null" and urlsplit(origin).netloc != host:
                return self._forbidden(f"a change from another origin ({origin}) is refused")
            if origin == "null":
                return self._forbidden("a change from an opaque origin is refused")
            return None
        if "token" in request.query_params:
            return None if _same_token(request.query_params["token"], self.token) else self._forbidden("wrong token")
        if self.token_for_reads and not (_same_token(request.cookies.get(self.cookie), self.token)
                                         or _same_token(request.headers.get(TOKEN_HEADER), self.token)):
            return self._forbidden("open the URL `grader mark` printed (it carries the token: ?token=...)")
        return None

    def _keep_token(self, request: Request) -> Response:
        """The token from the URL into the cookie, then the same page without it (so it leaves
        the address bar, the history and any Referer)."""
        query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
        response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), status_code=303)
        response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
        return response

    def _forbidden(self, reason: str) -> Response:
        return JSONResponse({"error": reason}, status_code=403)

    def _with_headers(self, response: Response) -> Response:
        for name, value in self._security_headers():
            response.headers[name.decode()] = value.decode()
        return response

    @staticmethod
    def _security_headers() -> list[tuple[bytes, bytes]]:
        return [(b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                (b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
                (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store")]


# --- the app ----------------------------------------------------------------------------------


class MarkingApp:
    """The pages and API over one OUT folder's marking database."""

    def __init__(self, out_dir: Path, config: AssignmentConfig, store: MarkStore, token: str) -> None:
        self.out_dir = Path(out_dir)
        self.config = config
        self.store = store
        self.token = token
        self.answer_groups = _answer_groups_function()
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(MARK_TEMPLATES), autoescape=True,
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.templates.filters["pts"] = _points

    def render(self, name: str, **context) -> str:
        return self.templates.get_template(name).render(token=self.token, assignment=self.config.assignment, **context)

    # -- reading --

    def progress(self) -> list[QuestionProgress]:
        marks = self.store.all_marks()
        rows = []
        for question in self.config.questions:
            answers = self.store.answers(question.id)
            by_sub = marks.get(question.id, {})
            stale = sum(1 for m in by_sub.values() if m.stale)
            rows.append(QuestionProgress(
                question=question, answers=len(answers), marked=len(by_sub) - stale, stale=stale,
                unmarked=sum(1 for a in answers if a["submission"] not in by_sub),
                missing=sum(1 for a in answers if not a["found"])))
        return rows

    def rows(self, question_id: str) -> list[AnswerRow]:
        answers = self.store.answers(question_id)
        marks = self.store.question_marks(question_id)
        groups = self._groups(question_id)
        rows = []
        for a in answers:
            group = groups.get(a["submission"])
            rows.append(AnswerRow(
                submission=a["submission"], folder=a["folder"], found=bool(a["found"]),
                empty=bool(a["found"]) and not a["text"].strip(), words=a["words"], limit=a["word_limit"],
                over_limit=bool(a["over_limit"]), note=a["note"], mark=marks.get(a["submission"]),
                group=group[0] if group else None, group_size=group[1] if group else 1,
                representative=bool(group and group[2] == a["submission"])))
        return rows

    def warm(self) -> None:
        """Compute (and store) every question's answer groups now, and load the maths renderer
        and the evidence code (about a second, cold), so no marker waits for them later."""
        from ..mathtext import tex_to_svg
        from . import evidence  # noqa: F401

        tex_to_svg("x")
        for question in self.config.questions:
            self._groups(question.id)

    def _groups(self, question_id: str) -> dict[str, tuple[int, int, str]]:
        """submission -> (group id, group size, representative); {} without grouping."""
        if self.answer_groups is None:
            return {}
        return {s: (g.id, g.size, g.representative)
                for g in self.answer_groups(self.store, question_id) for s in g.submissions}

    def answer_payload(self, question: Question, submission: str) -> dict:
        row = self.store.answer(submission, question.id)
        mark = self.store.mark(submission, question.id)
        answer_html = (markdown_to_html(row["text"]) if row["found"] and row["text"].strip()
                       else html.escape(row["note"] or "no answer"))
        return {
            "submission": submission, "found": bool(row["found"]), "words": row["words"],
            "limit": row["word_limit"], "over_limit": bool(row["over_limit"]),
            "answer_html": str(answer_html),
            "evidence_html": self.evidence_html(question, row["folder"]),
            "mark": mark.model_dump() if mark else None,
        }

    def evidence_html(self, question: Question, folder: str) -> str:
        from ..report import ReportError, load_result
        from .evidence import question_evidence

        problem, evidence = None, None
        try:
            result: SubmissionResult = load_result(self.out_dir / folder / RESULT_JSON)
            evidence = question_evidence(self.out_dir, folder, result, question, self.config)
        except (ReportError, GraderError, OSError) as exc:
            problem = str(exc)
        return self.render("evidence.html.j2", evidence=evidence, problem=problem, question=question)


def _points(value: float | None) -> str:
    if value is None:
        return "—"
    text = format_decimal(value, 2)   # as the PDF writes points, with a sign on a change
    return text if text == "0" or text.startswith("-") else "+" + text


def create_app(
    out_dir: Path, config: AssignmentConfig, marker: str | None, token: str, *,
    token_for_reads: bool = False, allowed_hosts: set[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> FastAPI:
    """The marking app over OUT. token_for_reads: every request needs the token (an app bound
    off loopback); allowed_hosts: the Host headers it answers to (None: any)."""
    store = MarkStore(out_dir, config, marker)
    results, problems = load_results(out_dir)
    for problem in problems:
        (log or (lambda _m: None))(f"left out: {problem}")
    report = store.sync_answers(results)
    if log:
        log(f"{len(results)} submission(s): {report.added} answer(s) new, {report.changed} changed, "
            f"{report.stale_marks} stale mark(s)")
    marking = MarkingApp(out_dir, config, store, token)
    app = FastAPI(title="grader mark", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.marking = marking
    _routes(app, marking)
    app.add_middleware(AccessGuard, token=token, token_for_reads=token_for_reads, allowed_hosts=allowed_hosts)
    return app


def _error(problem: Exception | str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": str(problem)}, status_code=status)


def _routes(app: FastAPI, marking: MarkingApp) -> None:
    store = marking.store

    @app.exception_handler(MarkConflict)
    async def conflict(_request, exc: MarkConflict):
        return JSONResponse({"error": str(exc), "mark": exc.current.model_dump()}, status_code=409)

    @app.exception_handler(MarkingError)
    async def refused(_request, exc: MarkingError):
        return _error(exc)

    @app.get("/", response_class=HTMLResponse)
    def index():
        return marking.render("index.html.j2", progress=marking.progress(), marker=store.marker)

    @app.get("/q/{question_id}", response_class=HTMLResponse)
    def question_page(question_id: str, s: str | None = None):
        question = store.question(question_id)
        rows = marking.rows(question_id)
        rubric = store.rubric(question_id)
        counts = store.item_counts(question_id)
        current = next((i for i, r in enumerate(rows) if r.submission == s), 0)
        page_data = {
            "question": question.id, "points": question.points, "current": current,
            "groups": marking.answer_groups is not None,
            "items": [item.model_dump() for item in rubric],
            "answers": [{"submission": r.submission, "group": r.group, "flags": r.flags, "state": r.state,
                         "mark": r.mark.model_dump() if r.mark else None} for r in rows],
        }
        return marking.render("question.html.j2", question=question, rows=rows, rubric=rubric, counts=counts,
                              page_data=page_data, marker=store.marker,
                              questions=[q.id for q in marking.config.questions])

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC_FILES:
            return _error(f"no such file {name!r}", 404)
        return Response((MARK_TEMPLATES / name).read_bytes(), media_type=STATIC_FILES[name])

    @app.get("/api/question/{question_id}")
    def question_rows(question_id: str):
        store.question(question_id)
        return {"rows": [r.model_dump() for r in marking.rows(question_id)],
                "items": [i.model_dump() for i in store.rubric(question_id)]}

    @app.get("/api/answer/{question_id}/{submission}")
    def answer(question_id: str, submission: str):
        return marking.answer_payload(store.question(question_id), submission)

    @app.post("/api/apply")
    def apply(body: ApplyRequest):
        marks = store.apply_item(body.item, list(dict.fromkeys(body.submissions)), body.applied)
        return {"marks": [m.model_dump() for m in marks]}

    @app.post("/api/mark")
    def set_mark(body: MarkRequest):
        mark = store.set_mark(body.submission, body.question, adjustment=body.adjustment,
                              comment=body.comment, base_version=body.base_version)
        return {"mark": mark.model_dump()}

    @app.post("/api/clear")
    def clear(body: ClearRequest):
        store.clear_mark(body.submission, body.question)
        return {"mark": None}

    @app.post("/api/items")
    def add_item(body: NewItemRequest):
        return {"item": store.add_item(body.question, body.text, body.points).model_dump()}

    @app.post("/api/items/{item_id}")
    def change_item(item_id: int, body: ItemChangeRequest):
        return {"item": store.update_item(item_id, text=body.text, points=body.points).model_dump()}

    @app.post("/api/items/{item_id}/delete")
    def delete_item(item_id: int):
        return {"answers_left": store.delete_item(item_id)}


# --- serving ----------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts, so that port 0 gives a known port and
    a port in use is a clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise MarkingError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(out: Path, config: AssignmentConfig, host: str = "127.0.0.1", port: int = 8765,
          marker: str | None = None, log: Callable[[str], None] = print) -> None:
    """Run the marking app until interrupted; prints its URL (with the token)."""
    import uvicorn

    sock = _bind(host, port)
    port = sock.getsockname()[1]
    loopback = is_loopback(host)
    token = secrets.token_urlsafe(24)
    app = create_app(out, config, marker, token, token_for_reads=not loopback,
                     allowed_hosts=loopback_hosts(port) if loopback else None, log=log)
    log("grouping similar answers …")
    app.state.marking.warm()
    shown_host = host if loopback or host not in ("0.0.0.0", "::") else socket.gethostname()
    if ":" in shown_host and not shown_host.startswith("["):
        shown_host = f"[{shown_host}]"
    log(f"marking {out} as {app.state.marking.store.marker}: open http://{shown_host}:{port}/?token={token}")
    if not loopback:
        log("listening beyond this machine: every request needs the token; the connection is not encrypted, "
            "so prefer an SSH tunnel (ssh -L) on untrusted networks")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
