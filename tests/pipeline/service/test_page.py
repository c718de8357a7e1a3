"""The web page at `/`: its files over the HTTP layer alone, then the page itself in a real
headless Chromium (Debian's, driven by Playwright over the DevTools protocol) against the real
Serve app (`serve_app`), and, for what needs a controlled backend (an API key, citations and
quotes), against a stand-in served on loopback."""

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import uvicorn
from playwright.sync_api import expect, sync_playwright
from servehelpers import AUTH, StandIn, asgi_client, small_limits_config
from starlette.datastructures import Headers

from pipeline.ports import free_port
from pipeline.service.routes import build_api
from pipeline.wire import AnswerStats, Delta, Finished, SourceRef, Started

CHROMIUM = shutil.which("chromium")  # Debian's package: .ci/run installs it
# Headless as root on a closed network: without the background-networking flags Chromium's own
# connections are refused and it stalls.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",  # Chromium picks one and writes it to DevToolsActivePort
)
# On the tests that need Chromium: skipped before any fixture starts (the Serve app included).
in_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium installed (Debian: apt-get install chromium; .ci/run does)",
)
WAIT_MS = 20_000  # any one wait in the browser; the module stays well under a minute
OVER = re.compile(r"^(done|stopped|failed)$")  # a panel's data-state once its request is over
QUESTION = "How do I parse a JSON string into a Python object?"
BLANK_QUESTION_ERROR = (
    "invalid 'question': must not be empty, whitespace or invisible characters only"
)


# ---- the files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/", "text/html; charset=utf-8"),
        ("/static/page.js", "text/javascript; charset=utf-8"),
        ("/static/page.css", "text/css; charset=utf-8"),
        ("/static/icon.svg", "image/svg+xml"),
    ],
)
def test_the_page_and_its_files_are_served_with_their_content_types(path, media_type):
    response = asgi_client(build_api(StandIn(), small_limits_config())).get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.headers["x-content-type-options"] == "nosniff"
    # Nothing may come from elsewhere, and the browser is told so.
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_the_page_refers_only_to_its_own_files():
    client = asgi_client(build_api(StandIn(), small_limits_config()))
    links = re.findall(r'(?:src|href)="([^"]*)"', client.get("/").text)
    assert links
    assert all(link.startswith(("/static/", "#")) for link in links), links
    for name in ("page.js", "page.css"):
        assert "://" not in client.get(f"/static/{name}").text  # no URL of another host


def test_unknown_static_files_are_404_in_the_apis_error_shape():
    client = asgi_client(build_api(StandIn(), small_limits_config()))
    for path in ("/static/missing.js", "/static/../routes.py", "/static/"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert "/" not in client.get("/openapi.json").json()["paths"]  # the page is not API


# ---- the browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the module, stopped by PID (with every process it started)."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    process = subprocess.Popen(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port = _devtools_port(profile, process)
        with sync_playwright() as playwright:
            browser = playwright.chromium.connect_over_cdp(f"http://127.0.0.1:{port}")
            yield browser
            browser.close()
    finally:
        _stop(process)


def _devtools_port(profile: Path, process: subprocess.Popen) -> int:
    deadline = time.monotonic() + 30
    active = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        assert process.poll() is None, f"Chromium exited with {process.returncode}"
        if active.exists() and active.read_text().strip():
            return int(active.read_text().split()[0])
        time.sleep(0.05)
    raise TimeoutError("Chromium did not open its DevTools port within 30 s")


def _stop(process: subprocess.Popen) -> None:
    children = psutil.Process(process.pid).children(recursive=True)
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
    _, alive = psutil.wait_procs(children, timeout=10)
    for leftover in alive:
        leftover.kill()
    assert not alive, f"Chromium processes left running: {[p.pid for p in alive]}"


@pytest.fixture
def page(browser):
    """A fresh page in a fresh browser context (no storage shared between tests)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    yield page
    context.close()
    assert not errors, f"the page's script failed: {errors}"


@pytest.fixture(scope="module")
def url(serve_app):
    return serve_app[0]


@pytest.fixture
def app_page(page):
    """A page whose requests carry the session app's API key (the key flow itself is tested
    against a stand-in below)."""
    page.context.set_extra_http_headers(AUTH)
    return page


def ask(page, question: str, **settings: str) -> None:
    for field, value in settings.items():
        page.fill(f"#{field.replace('_', '-')}", value)
    page.fill("#question", question)
    page.click("#ask")


def chunks(panel) -> list[dict]:
    return panel.locator(".chunk").evaluate_all(
        "spans => spans.map(s => ({text: s.textContent, cls: s.className, steps: +s.dataset.steps, "
        "tokens: +s.dataset.tokens, accepted: +s.dataset.accepted}))"
    )


def figure(panel, name: str) -> str:
    return panel.locator(f'[data-figure="{name}"]').inner_text()


@in_chromium
def test_an_answer_streams_in_with_its_sources_lookahead_shading_and_a_plain_one_beside_it(
    app_page, url
):
    page = app_page
    with httpx.Client(
        base_url=url, headers=AUTH, timeout=httpx.Timeout(10.0, read=120.0)
    ) as client:
        reference = client.post("/v1/rag", json={"question": QUESTION, "max_tokens": 24}).json()
    page.goto(url)
    # Every length the lookahead answer had on screen, to see it grow piece by piece.
    page.evaluate(
        """() => {
        window.lengths = [];
        new MutationObserver(() => {
            const answer = document.querySelector('.panel[data-lookahead="true"] .answer');
            if (answer) window.lengths.push(answer.textContent.length);
        }).observe(document.getElementById("answers"),
                   {childList: true, subtree: true, characterData: true});
        }"""
    )
    page.check("#compare")
    ask(page, QUESTION, max_tokens="24")
    lookahead = page.locator('.panel[data-lookahead="true"]')
    plain = page.locator('.panel[data-lookahead="false"]')
    for panel in (lookahead, plain):
        expect(panel).to_have_attribute("data-state", OVER, timeout=WAIT_MS)
        assert panel.get_attribute("data-state") == "done", panel.inner_text()
        # The same answer as the API's, all of its tokens counted, held-back steps included.
        assert panel.locator(".answer").text_content() == reference["answer"]
        assert figure(panel, "tokens") == str(reference["usage"]["completion_tokens"])

    lengths = page.evaluate("window.lengths")
    growth = sorted(set(lengths))
    assert len(growth) >= 3, lengths  # streamed: it grew in several pieces
    assert growth[-1] == len(reference["answer"])

    # Lookahead: chunks of several tokens, shaded by the drafted tokens each step accepted.
    shown = chunks(lookahead)
    assert all(c["cls"] == f"chunk a{min(c['accepted'] // c['steps'], 4)}" for c in shown), shown
    assert any(c["accepted"] > 0 for c in shown), shown
    assert all(c["accepted"] < c["tokens"] for c in shown)
    assert float(figure(lookahead, "tokens-per-step")) > 1.0
    assert " of " in figure(lookahead, "accepted")
    # Plain decoding: one token a step, nothing drafted, nothing shaded.
    plain_chunks = chunks(plain)
    assert {(c["cls"], c["tokens"] - c["steps"], c["accepted"]) for c in plain_chunks} == {
        ("chunk a0", 0, 0)
    }
    assert figure(plain, "accepted") == "0 of 0 drafted"
    assert figure(plain, "draft-per-step") == "0.0"
    comparison = page.locator("#comparison")
    assert comparison.is_visible()
    assert "for the same answer" in comparison.inner_text()

    # The sources, with their passage text on demand.
    items = page.locator("#sources li")
    assert items.count() == len(reference["sources"])
    first = reference["sources"][0]
    assert first["title"] in items.first.inner_text()
    assert first["id"] in items.first.inner_text()
    passage = items.first.locator(".passage")
    assert not passage.is_visible()
    items.first.locator("summary").click()
    assert passage.is_visible()
    assert passage.text_content() == first["text"]


@in_chromium
def test_the_stop_button_ends_the_stream(app_page, url):
    page = app_page
    page.goto(url)
    ask(page, "Explain every function of the itertools module, one by one.", max_tokens="256")
    panel = page.locator(".panel")
    panel.locator(".chunk").first.wait_for()
    panel.locator(".stop").click()
    expect(panel).to_have_attribute("data-state", OVER, timeout=WAIT_MS)
    assert panel.get_attribute("data-state") == "stopped", panel.inner_text()
    assert panel.locator(".status").inner_text() == "stopped"
    assert figure(panel, "finish") == "–"  # no end event came
    stopped_at = panel.locator(".answer").text_content()
    page.wait_for_timeout(500)
    assert panel.locator(".answer").text_content() == stopped_at  # nothing more arrives
    assert int(figure(panel, "tokens")) < 256
    assert page.locator("#stop-all").is_disabled()


@in_chromium
def test_a_blank_question_shows_the_apis_error(app_page, url):
    page = app_page
    page.goto(url)
    ask(page, "   ")
    error = page.locator("#error")
    error.wait_for()
    assert error.inner_text() == BLANK_QUESTION_ERROR
    assert page.locator(".panel").get_attribute("data-state") == "failed"
    assert page.locator("#sources-section").is_hidden()


# ---- an API key, citations and quotes (a stand-in backend) -------------------------------------

KEY = "s3cret-key"
PASSAGE = "json.loads(s) deserializes s, a str holding a JSON document, to a Python object."
QUOTED = "json.loads(s) deserializes s, a str holding a JSON document"


class Quoting(StandIn):
    """An answer that cites its first passage and quotes it across two steps."""

    async def generate(self, job):
        sources = (
            SourceRef("json-0", "json", "stdlib", 0.9, PASSAGE),
            SourceRef("csv-3", "csv", "stdlib", 0.4, "The csv module reads and writes CSV files."),
        )
        yield Started(30, sources)
        yield Delta("As [1] says, ", 4, 0)
        yield Delta("json.loads(s) deserializes s", 6, 5)
        yield Delta("", 1, 0)  # held back
        yield Delta(", a str holding a JSON document.", 8, 7)
        yield Finished("stop", 19, AnswerStats(4, 19 / 4, 30, 12, 0.1, job.lookahead))


class HeaderRecorder:
    """Records the Authorization header of every `/v1/` request the app behind it is sent."""

    def __init__(self, app) -> None:
        self.app, self.seen = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            self.seen.append(Headers(scope=scope).get("authorization"))
        await self.app(scope, receive, send)


@pytest.fixture
def keyed() -> Iterator[tuple[str, HeaderRecorder]]:
    """The stand-in with an API key configured, served by uvicorn on loopback in a thread."""
    app = HeaderRecorder(build_api(Quoting(), small_limits_config(**{"server.api_keys": [KEY]})))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="page-standin")
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive(), "uvicorn stopped"
            assert time.monotonic() < deadline, "uvicorn did not start within 20 s"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(10)
    assert not thread.is_alive()


@in_chromium
def test_the_page_asks_for_an_api_key_keeps_it_in_memory_and_sends_it_as_a_bearer(page, keyed):
    url, check = keyed
    page.goto(url)  # the page itself needs no key
    ask(page, "How do I parse JSON?")
    key_form = page.locator("#key-form")
    key_form.wait_for()
    assert "no API key" in page.locator("#key-reason").inner_text()
    page.fill("#api-key", "wrong")
    page.click("#key-form button")
    page.locator("#key-reason", has_text="The key was refused").wait_for()
    page.fill("#api-key", KEY)
    page.click("#key-form button")
    panel = page.locator('.panel[data-state="done"]')
    panel.wait_for()
    assert check.seen == [None, "Bearer wrong", f"Bearer {KEY}"]
    # In page memory only: no storage, no cookie, not in the document.
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0
    assert page.evaluate("document.cookie") == ""
    assert KEY not in page.content()
    assert key_form.is_hidden()

    # Citations link to their source; the spans found verbatim in a passage are marked.
    answer = panel.locator(".answer")
    assert answer.text_content() == f"As [1] says, {QUOTED}."
    cite = answer.locator("a.cite")
    assert cite.inner_text() == "[1]"
    assert cite.get_attribute("href") == "#source-1"
    quotes = answer.locator("mark.quote")
    assert "".join(quotes.all_inner_texts()) == QUOTED
    assert {q.get_attribute("data-source") for q in quotes.all()} == {"1"}
    # The held-back step went with the next piece of text: 4 steps, 3 chunks, 19 tokens.
    shown = [(c["steps"], c["tokens"], c["accepted"], c["cls"]) for c in chunks(panel)]
    assert shown == [(1, 4, 0, "chunk a0"), (1, 6, 5, "chunk a4"), (2, 9, 7, "chunk a3")]
    assert (figure(panel, "steps"), figure(panel, "tokens")) == ("4", "19")
    cite.click()
    assert page.evaluate("location.hash") == "#source-1"
