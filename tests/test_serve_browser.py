"""The chat page in a real browser (headless Chromium driven by Playwright): it streams a reply, talks only
to its own origin, renders model output as text (no HTML injection), and fits a phone-width screen.
Screenshots go to test-artifacts/."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from acik.serve import ServerConfig, create_app
from acik.tokenizer import load_tokenizer, save_byte_tokenizer
from serve_helpers import LiveServer, ScriptedEngine

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
XSS = '<img src=x onerror="window.__pwned=1">'
REPLY = f"Here is **bold** text, `inline code` and an attempt: {XSS} <script>window.__pwned=2</script>\n\n" \
        "- one\n- two\n\n```python\nprint('hi')\n```"


def wait_js(page, expression: str, timeout: float = 20.0) -> None:
    """Poll a JS expression from Python: Playwright's wait_for_function polls with eval(), which the
    page's Content-Security-Policy (rightly) forbids."""
    deadline = time.time() + timeout
    while not page.evaluate(expression):
        assert time.time() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.03)


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed: run `apt-get install -y chromium` (Debian/Ubuntu) "
                "and `pip install playwright` to run the browser tests")


@pytest.fixture(scope="module")
def browser():
    exe = chromium_path()
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download "
                                   "needed: the tests use the system Chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    tok = load_tokenizer(save_byte_tokenizer(tmp_path_factory.mktemp("tok")))
    app = create_app(ScriptedEngine(REPLY, delay=0.02), tok, ServerConfig("acik-demo", 512, 260))
    with LiveServer(app) as s:
        yield s


def test_chat_page(browser, page_server):
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1100, "height": 720})
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    page.goto(page_server.url + "/")
    wait_js(page, "document.getElementById('model-name').textContent === 'acik-demo'")
    page.fill("#input", "Say something with markup")
    page.keyboard.press("Enter")
    assert page.locator(".msg.user .body").inner_text() == "Say something with markup"

    # Streamed: the reply grows in several steps while the stop button is shown.
    lengths = []
    deadline = time.time() + 20
    while time.time() < deadline:
        text = page.evaluate("(document.querySelector('.msg.assistant .body') || {}).textContent || ''")
        if not lengths or len(text) != lengths[-1]:
            lengths.append(len(text))
        if page.locator("#send").is_visible():
            break
        time.sleep(0.03)
    assert len([n for n in lengths if n > 0]) >= 3, lengths
    page.wait_for_selector(".msg.assistant .meta")

    body = page.locator(".msg.assistant .body")
    text = body.inner_text()
    assert XSS in text and "<script>window.__pwned=2</script>" in text  # shown as text...
    assert body.locator("img").count() == 0 and body.locator("script").count() == 0  # ...never as HTML
    assert page.evaluate("window.__pwned") is None
    assert body.locator("strong").inner_text() == "bold"
    assert body.locator("pre code").inner_text() == "print('hi')"
    assert body.locator("li").count() == 2
    assert "tokens/s" in page.locator(".msg.assistant .meta").inner_text()

    # Kept in this browser's storage, not on the server.
    stored = page.evaluate("JSON.parse(localStorage.getItem('acik.conversations.v1'))")
    assert stored[0]["messages"][1]["content"] == REPLY

    origin = page_server.url
    assert requests and all(u.startswith(origin + "/") or u.startswith("data:") for u in requests), requests
    assert not errors, errors
    page.screenshot(path=str(ARTIFACTS / "serve-chat-desktop.png"))

    # Phone width: no sideways scrolling, composer visible.
    page.set_viewport_size({"width": 390, "height": 800})
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    assert page.locator("#input").is_visible() and page.locator("#send").is_visible()
    page.screenshot(path=str(ARTIFACTS / "serve-chat-phone.png"))
    context.close()


def test_stop_button(browser, page_server):
    context = browser.new_context(viewport={"width": 900, "height": 700})
    page = context.new_page()
    page.goto(page_server.url + "/")
    page.fill("#input", "a long answer please")
    page.click("#send")
    wait_js(page, "(document.querySelector('.msg.assistant .body') || {}).textContent?.length > 5")
    page.click("#stop")
    page.wait_for_selector("#send", state="visible")
    assert len(page.locator(".msg.assistant .body").inner_text()) < len(REPLY)
    # A new chat starts empty; the old one stays in the list.
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0 and page.locator("#conversations li").count() >= 2
    context.close()


class _BurstEngine(ScriptedEngine):
    """Nine tokens with no text, then one with it all: the page sees the reply arrive in one burst, as it
    does when a reply's first tokens are partial characters or a proxy buffers the stream."""

    def submit(self, request):
        self.requests.append(request)
        engine = self

        class Handle:
            prompt_tokens = len(request.prompt_ids)
            completion_tokens = 0
            prompt_logprobs = None

            def cancel(self) -> None:
                pass

            def __iter__(self):
                from acik.engine import Event

                for i in range(10):
                    time.sleep(engine.delay)
                    self.completion_tokens += 1
                    yield Event(65, engine.reply if i == 9 else "", finish_reason="stop" if i == 9 else None)

        return Handle()


def test_page_says_once_that_old_turns_are_left_out_and_rates_from_the_servers_timing(browser, tmp_path):
    """A 160-token context: the page asks for "truncation": "auto", says once that the oldest messages are no
    longer sent, shows a message too long as an error and goes on, and takes tokens/s from the server (ten
    tokens 20 ms apart: about 50/s, not the thousands that arrival times in one burst would give)."""
    tok = load_tokenizer(save_byte_tokenizer(tmp_path / "tok"))
    engine = _BurstEngine("Fine.", delay=0.02)
    with LiveServer(create_app(engine, tok, ServerConfig("acik-small", 160, 260))) as server:
        context = browser.new_context(viewport={"width": 900, "height": 700})
        page = context.new_page()
        page.goto(server.url + "/")
        wait_js(page, "document.getElementById('model-name').textContent === 'acik-small'")

        def say(text: str, replies: int) -> None:
            page.fill("#input", text)
            page.keyboard.press("Enter")
            wait_js(page, f"document.querySelectorAll('.msg.assistant .meta, .msg.error').length === {replies}")
            page.wait_for_selector("#send", state="visible")

        for i in range(3):
            say(f"Tell me about the river number {i} and its longest bridges.", i + 1)
        assert page.locator(".msg.notice").count() == 1
        assert "outgrown the model's context" in page.locator(".msg.notice").inner_text()
        assert engine.requests[-1].prompt_ids and len(engine.requests[-1].prompt_ids) < 160
        metas = page.locator(".msg.assistant .meta").all_inner_texts()
        rates = [float(m.split(" tokens/s")[0]) for m in metas]
        assert all(5 < r <= 60 for r in rates), metas

        say("w" * 300, 4)  # over the context by itself: an error in the page, not the end of the chat
        assert "Shorten the message" in page.locator(".msg.error").inner_text()
        say("Still there?", 5)
        assert "w" * 300 not in bytes(t for t in engine.requests[-1].prompt_ids if t < 256).decode()
        assert page.locator(".msg.notice").count() == 1
        stored = page.evaluate("JSON.parse(localStorage.getItem('acik.conversations.v1'))")[0]["messages"]
        assert [m["role"] for m in stored].count("notice") == 1
        page.locator(".msg.notice").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "serve-chat-context.png"))
        context.close()
