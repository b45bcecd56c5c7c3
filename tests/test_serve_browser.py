"""The chat page in headless Chromium (Debian's chromium, driven by Playwright) against the real server
and the real tiny model: streaming, regenerate, stop, the model gate on Send, IME-safe Enter, labels and
keyboard access, the phone drawer, autoscroll, and renaming, copying and deleting chats.
The Markdown rendering of answers is in test_chat_page_markdown.py (same fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.serve.app import BackgroundServer, create_app, describe_model

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-smooth-scrolling"]
STORE = "picochat.conversations"  # where the page keeps conversations (localStorage)
PHONE = {"width": 390, "height": 844}

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
def open_page(browser, server):
    """open_page(viewport=..., dark=..., conversations=[...], routes={pattern: handler}) -> a page of the
    chat, in a fresh browser context, with `conversations` in its storage. Nothing may leave this
    machine: any request that is not to our server fails the test."""
    contexts, outside = [], []

    def only_our_server(route):
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    def open_(viewport=None, dark=False, conversations=None, routes=None, touch=False):
        context = browser.new_context(viewport=viewport or {"width": 1280, "height": 800}, has_touch=touch,
                                      color_scheme="dark" if dark else "light")
        contexts.append(context)
        context.route("**/*", only_our_server)
        for pattern, handler in (routes or {}).items():
            context.route(pattern, handler)
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.goto(server.url + "/")
        if conversations is not None:
            page.evaluate("([key, value]) => localStorage.setItem(key, JSON.stringify(value))",
                          [STORE, conversations])
            page.reload()
        return page

    yield open_
    for context in contexts:
        context.close()
    assert outside == [], f"the page tried to reach {outside}"


@pytest.fixture
def page(open_page):
    return open_page()


def chat(title, *pairs):
    """A stored conversation: chat("Title", ("question", "answer"), ...)."""
    messages = []
    for question, answer in pairs:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"id": title.lower().replace(" ", "-"), "title": title, "messages": messages}


def stored(page):
    return page.evaluate("key => JSON.parse(localStorage.getItem(key))", STORE)


def wait_ready(page):
    page.locator("#send:not([disabled])").wait_for()


def last_answer(page):
    return page.locator(".message.assistant").last


def test_send_regenerate_and_stop(page, engine):
    from test_serve import ENDLESS

    page.locator("#model-name").filter(has_text="tiny-test").wait_for()
    assert "params" in page.inner_text("#model-size")
    wait_ready(page)

    # sampling settings travel with the request
    page.click("#settings-toggle")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "500")  # more than the 64-token context: the page caps it
    page.fill("#system", "Be brief.")
    page.click("#settings-toggle")

    # the capped request still leaves no room for the prompt: the server's refusal is shown
    page.fill("#input", "Hello there")
    with page.expect_request("**/v1/chat/completions") as sent:
        page.press("#input", "Enter")
    body = sent.value.post_data_json
    assert body["temperature"] == 0 and body["max_tokens"] == 63 and body["stream"] is True
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    page.locator(".message.user").filter(has_text="Hello there").wait_for()
    refused = page.locator('.message.assistant[data-state="error"]')
    refused.wait_for()
    assert "context" in refused.locator(".error").inner_text()
    assert page.locator("#history li").first.locator(".open").inner_text() == "Hello there"

    # regenerate replaces the answer rather than adding one; the real model's answer arrives streamed,
    # then the usage line
    page.click("#settings-toggle")
    page.fill("#max_tokens", "8")
    page.click("#settings-toggle")
    with page.expect_request("**/v1/chat/completions") as sent:
        page.click("#regenerate")
    assert sent.value.post_data_json["max_tokens"] == 8
    page.locator('.message.assistant[data-state="done"]').wait_for()
    assert "tokens" in last_answer(page).locator(".meta").inner_text()
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
    assert streaming.get_attribute("aria-busy") == "true"
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

    wait_ready(page)
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


def test_send_waits_until_the_model_has_answered(open_page):
    held = []
    page = open_page(routes={"**/v1/models": lambda route: held.append(route)})  # /v1/models gets no answer yet
    page.wait_for_function("() => document.readyState === 'complete'")
    assert page.is_disabled("#send")
    assert "model" in page.inner_text("#status").lower()  # the reader is told what Send waits for
    chats = []
    page.on("request", lambda request: chats.append(request) if "/chat/completions" in request.url else None)
    page.fill("#input", "too early")
    page.press("#input", "Enter")
    page.wait_for_timeout(200)
    assert chats == [] and page.input_value("#input") == "too early"  # kept, not lost

    assert len(held) == 1
    held[0].fulfill(status=503, json={"error": {"message": "loading", "type": "server_error"}})
    page.locator("#status", has_text="retrying").wait_for()  # a failed answer leaves Send off and retries
    assert page.is_disabled("#send")
    page.context.unroute("**/v1/models")
    wait_ready(page)
    assert page.inner_text("#model-name") == "tiny-test"
    with page.expect_request("**/v1/chat/completions"):
        page.press("#input", "Enter")


def test_enter_while_an_ime_is_composing_does_not_send(page):
    wait_ready(page)
    chats = []
    page.on("request", lambda request: chats.append(request) if "/chat/completions" in request.url else None)
    page.focus("#input")
    ime = page.context.new_cdp_session(page)
    ime.send("Input.imeSetComposition", {"text": "にほん", "selectionStart": 3, "selectionEnd": 3})
    page.keyboard.press("Enter")  # picks the candidate: keydown arrives with isComposing
    page.wait_for_timeout(200)
    assert chats == [] and page.locator(".message").count() == 0
    ime.send("Input.insertText", {"text": "日本"})  # the composition ends
    with page.expect_request("**/v1/chat/completions") as sent:
        page.keyboard.press("Enter")  # now Enter sends
    assert sent.value.post_data_json["messages"][-1]["content"] == "日本"


def test_controls_have_names_roles_and_keyboard_access(open_page):
    page = open_page(conversations=[chat("Alpha", ("a", "first answer")), chat("Beta", ("b", "second answer"))])
    wait_ready(page)
    assert page.get_by_role("textbox", name="Message").count() == 1  # the textarea has a label
    assert page.get_by_role("navigation", name="Chats").count() == 1
    assert page.get_by_role("log").count() == 1
    nameless = page.evaluate("""() => [...document.querySelectorAll('button, input, textarea')]
        .filter(e => e.offsetParent !== null)
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
        .map(e => e.outerHTML)""")
    assert nameless == []

    # from the top of the page, Tab reaches the history and Enter opens a chat
    page.locator("body").focus()
    for _ in range(15):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Beta":
            break
    else:
        pytest.fail("Tab never reached the chat 'Beta' in the history")
    page.keyboard.press("Enter")
    page.locator(".message.assistant", has_text="second answer").wait_for()
    assert page.locator("#history .open", has_text="Beta").get_attribute("aria-current") == "page"


def test_phone_width_drawer_gives_history_and_new_chat(open_page):
    page = open_page(viewport=PHONE, touch=True, conversations=[chat("Alpha", ("a", "first answer"))])
    wait_ready(page)
    assert not page.is_visible("#new-chat") and not page.is_visible("#history")
    toggle = page.get_by_role("button", name="Chats")
    assert toggle.get_attribute("aria-expanded") == "false"

    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "true"
    assert page.evaluate("document.activeElement.id") == "new-chat"  # the focus moves into the drawer
    page.locator("#new-chat").wait_for()  # on screen once the drawer has slid in, not off-canvas
    page.wait_for_function("""() => { const box = document.getElementById('new-chat').getBoundingClientRect();
                                      return box.left >= 0 && box.right <= innerWidth; }""")
    page.locator("#history .open", has_text="Alpha").click()  # picking a chat shows it and closes the drawer
    page.locator(".message.assistant", has_text="first answer").wait_for()
    page.locator("#new-chat").wait_for(state="hidden")

    toggle.click()
    for _ in range(8):  # Tab stays inside the open drawer
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.closest('#sidebar') !== null")
    page.keyboard.press("Escape")  # Escape closes it as well, and gives the focus back
    page.locator("#new-chat").wait_for(state="hidden")
    assert page.evaluate("document.activeElement.id") == "menu-toggle"

    toggle.click()
    page.click("#new-chat")
    page.locator("#new-chat").wait_for(state="hidden")
    assert page.locator(".message").count() == 0

    desktop = open_page()  # at desktop width the history is simply there
    assert desktop.is_visible("#new-chat") and not desktop.is_visible("#menu-toggle")


def test_autoscroll_follows_only_a_reader_at_the_bottom(open_page, engine):
    from test_serve import ENDLESS

    page = open_page(viewport={"width": 640, "height": 420})
    wait_ready(page)
    gap = "(() => { const m = document.getElementById('messages'); return m.scrollHeight - m.scrollTop - m.clientHeight; })()"
    height = "document.getElementById('messages').scrollHeight"
    engine.closed.clear()
    page.fill("#input", ENDLESS)
    page.click("#send")
    page.wait_for_function(
        "() => { const m = document.getElementById('messages'); return m.scrollHeight > m.clientHeight + 300; }")
    assert page.evaluate(gap) < 30  # a reader at the bottom is followed
    assert not page.is_visible("#jump-latest")

    page.mouse.move(320, 150)
    page.mouse.wheel(0, -250)  # the reader scrolls up to read
    page.wait_for_function(f"{gap} > 100")
    page.wait_for_timeout(100)
    where = page.evaluate("document.getElementById('messages').scrollTop")
    page.wait_for_function(f"n => {height} > n + 200", arg=page.evaluate(height))  # the answer grows on
    assert page.evaluate("document.getElementById('messages').scrollTop") == where  # ...and leaves them there
    assert page.is_visible("#jump-latest")

    page.click("#jump-latest")
    page.wait_for_function(f"{gap} < 30")
    page.locator("#jump-latest").wait_for(state="hidden")
    page.wait_for_function(f"n => {height} > n + 100", arg=page.evaluate(height))
    assert page.evaluate(gap) < 30  # following again
    page.click("#stop")
    assert engine.closed.wait(timeout=20)


def test_rename_copy_and_delete_chats(open_page):
    alpha = chat("Alpha", ("What is 2+2?", "It is **4**."))
    page = open_page(conversations=[alpha, chat("Beta", ("b", "second answer"))])
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    wait_ready(page)

    # rename: the title becomes an input; Enter keeps the new name, which survives a reload
    page.get_by_role("button", name="Rename Alpha").click()
    field = page.get_by_role("textbox", name="Chat name")
    assert field.input_value() == "Alpha"
    field.fill("Arithmetic")
    field.press("Enter")
    page.locator("#history .open", has_text="Arithmetic").wait_for()
    page.reload()
    assert [c["title"] for c in stored(page)] == ["Arithmetic", "Beta"]
    page.get_by_role("button", name="Rename Beta").click()
    page.get_by_role("textbox", name="Chat name").fill("never mind")
    page.keyboard.press("Escape")  # Escape keeps the old name
    page.locator("#history .open", has_text="Beta").wait_for()

    # copy a whole chat, and one answer as its Markdown source
    page.get_by_role("button", name="Copy Arithmetic").click()
    page.locator("#status", has_text="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == "You: What is 2+2?\n\ntiny-test: It is **4**."
    page.locator("#history .open", has_text="Arithmetic").click()
    last_answer(page).get_by_role("button", name="Copy").click()
    page.wait_for_function("async () => (await navigator.clipboard.readText()) === 'It is **4**.'")

    # delete asks first; No keeps the chat, Yes removes it and leaves an empty chat on screen
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Delete Arithmetic").click()
    assert [c["title"] for c in stored(page)] == ["Arithmetic", "Beta"]
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete Arithmetic").click()
    page.locator("#history .open", has_text="Arithmetic").wait_for(state="detached")
    assert [c["title"] for c in stored(page)] == ["Beta"]
    assert page.locator(".message").count() == 0
