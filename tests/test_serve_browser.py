"""The chat page in headless Chromium (Debian's chromium, driven by Playwright): a streamed answer
from the real tiny model, regenerate, stop mid-way, and the Markdown renderer."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.serve.app import BackgroundServer, create_app, describe_model

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                     "(apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    from test_serve import ScriptableEngine  # the real engine, plus two scripted answers

    from workbench.engine import Engine

    return ScriptableEngine(Engine.from_checkpoint(tiny_checkpoint, device="cpu"))


@pytest.fixture(scope="module")
def server(engine, tiny_checkpoint):
    app = create_app(engine, describe_model(engine.engine, tiny_checkpoint))
    with BackgroundServer(app) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context()
    # Nothing may leave this machine: any request that is not to our server fails the test.
    outside = []

    def only_our_server(route):
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_our_server)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(server.url + "/")
    yield page
    context.close()
    assert outside == [], f"the page tried to reach {outside}"


def last_answer(page):
    return page.locator(".message.assistant").last


def test_send_regenerate_and_stop(page, engine):
    from test_serve import ENDLESS

    page.locator("#model-name").filter(has_text="tiny-test").wait_for()
    assert "params" in page.inner_text("#model-size")

    # sampling settings travel with the request
    page.click("#settings-toggle")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "500")  # more than the 64-token context: the page caps it
    page.fill("#system", "Be brief.")
    page.click("#settings-toggle")

    # a message to the real model: its answer arrives streamed, then the usage line
    page.fill("#input", "Hello there")
    with page.expect_request("**/v1/chat/completions") as sent:
        page.press("#input", "Enter")
    body = sent.value.post_data_json
    assert body["temperature"] == 0 and body["max_tokens"] == 64 and body["stream"] is True
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    page.locator(".message.user").filter(has_text="Hello there").wait_for()
    page.locator('.message.assistant[data-state="done"]').wait_for()
    assert "tokens" in last_answer(page).locator(".meta").inner_text()
    assert page.locator("#history li").first.inner_text() == "Hello there"

    # regenerate replaces the answer rather than adding one
    page.click("#regenerate")
    page.locator('.message.assistant[data-state="done"]').wait_for()
    assert page.locator(".message.assistant").count() == 1

    # an answer that would never end: it streams in, Stop ends it, and the server stops generating
    engine.closed.clear()
    page.fill("#input", ENDLESS)
    page.click("#send")
    streaming = page.locator('.message.assistant[data-state="streaming"]')
    streaming.locator(".content", has_text="more more").wait_for()
    first = len(streaming.locator(".content").inner_text())
    page.wait_for_function(
        "n => document.querySelector('.message.assistant[data-state=streaming] .content').innerText.length > n",
        arg=first)  # still growing: streamed, not delivered at the end
    assert page.is_visible("#stop") and not page.is_visible("#send")
    page.click("#stop")
    stopped = page.locator('.message.assistant[data-state="stopped"]')
    stopped.wait_for()
    assert "more" in stopped.locator(".content").inner_text()
    assert page.is_visible("#send") and not page.is_visible("#stop")
    assert engine.closed.wait(timeout=20), "the server kept generating after the page pressed Stop"
    assert page.locator(".message.assistant").count() == 2


def test_thoughts_fold_and_tool_calls_stand_out(page):
    from test_serve import SCRIPTED

    page.fill("#input", SCRIPTED)
    page.click("#send")
    answer = page.locator('.message.assistant[data-state="done"]')
    answer.wait_for()
    thought = answer.locator("details.thought")
    assert thought.is_visible() and thought.get_attribute("open") is None  # folded
    assert thought.locator(".thought-text").text_content() == "Two plus three; use the tool."
    assert answer.locator(".tool-call code").inner_text() == "2+3"
    assert answer.locator(".tool-output code").inner_text() == "5"
    assert answer.locator(".content strong").inner_text() == "5"


def test_markdown_is_rendered_and_html_escaped(page):
    source = ("# Title\n\nSome **bold**, *italic* and `code <b>`.\n\n- one\n- two\n\n"
              "```python\nprint('<hi>')\n```\n"
              "```tool_call\n2+3\n```\n```tool_output\n5\n```\n<img src=x onerror=alert(1)>")
    html = page.evaluate("source => Markdown.render(source)", source)
    assert "<h1>Title</h1>" in html
    assert "<strong>bold</strong>" in html and "<em>italic</em>" in html
    assert "<code>code &lt;b&gt;</code>" in html
    assert "<ul><li>one</li><li>two</li></ul>" in html
    assert '<pre data-language="python"><code>print(&#39;&lt;hi&gt;&#39;)</code></pre>' in html
    assert 'class="tool tool-call"' in html and 'class="tool tool-output"' in html
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
