"""How the chat page renders answers (vendored markdown-it, then DOMPurify), in headless Chromium:
CommonMark cases the old hand-written renderer got wrong, wide content at phone width, link colours in
both themes, hostile Markdown that must stay inert (whole and streamed), and the streaming view that
re-renders only the unfinished last block yet always shows what a full render would."""

# ruff: noqa: F811 -- the fixtures imported from test_serve_browser are parameters of the tests below

from __future__ import annotations

import pytest
from test_serve_browser import PHONE, browser, chat, engine, open_page, page, pytestmark, server  # noqa: F401

CASES = {
    "arithmetic": "2*3*4 = 24, and 2**10 = 1024, but *this* is emphasis.",
    "numbered": "1. one\n2. two\n3. three",
    "numbered loose": "1. one\n\n2. two\n\n3. three",
    "nested": "- fruit\n  - apple\n  - pear\n- vegetables\n  1. leek\n  2. kale",
    "loose": "- first paragraph\n\n  second paragraph of the same item\n\n- next item",
    "table": "| name | count |\n|:-----|------:|\n| apples | 3 |\n| pears | 12 |",
    "tools": "```tool_call\n2+3\n```\n```tool_output\n5\n```\nSo **5**.",
    "code": "Use `<b>` like this:\n\n```python\nprint('<hi>')\n```",
}

# Each must render as text or as harmless markup: no script runs, no element can run one, no link
# leaves http(s)/mailto, nothing loads from anywhere.
HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)>",
    "<iframe src=javascript:alert(1)></iframe>",
    "<a href=javascript:alert(1)>click</a>",
    "<details open ontoggle=alert(1)>x</details>",
    "<style>body{display:none}</style>",
    "<meta http-equiv=refresh content='0;url=javascript:alert(1)'>",
    "<math><mi xlink:href=javascript:alert(1)>x</mi></math>",
    "<form action=javascript:alert(1)><button>go</button></form>",
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](java\tscript:alert(1))",
    "[click](&#106;avascript:alert(1))",
    "[click](vbscript:msgbox(1))",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[click](https://example.com \"t\\\" onmouseover=\\\"alert(1)\")",
    "[ref]\n\n[ref]: javascript:alert(1)",
    "<javascript:alert(1)>",
    "![x](https://example.com/track.png) ![y](javascript:alert(1))",
    "`<script>alert(1)</script>` and **<img src=x onerror=alert(1)>**",
    "```\n</code></pre><script>alert(1)</script>\n```",
    "```\"><script>alert(1)</script>\nx\n```",
    "```tool_call\n</code></div><img src=x onerror=alert(1)>\n```",
    "| a |\n|---|\n| <img src=x onerror=alert(1)> |",
    "<!-- x --><script>alert(1)</script>",
]

INERT = """root => {
    const bad = [];
    const forbidden = new Set(['SCRIPT', 'IFRAME', 'OBJECT', 'EMBED', 'SVG', 'MATH', 'STYLE', 'IMG', 'FORM',
                               'INPUT', 'BUTTON', 'META', 'LINK', 'BASE', 'VIDEO', 'AUDIO', 'SOURCE']);
    for (const element of root.querySelectorAll('*')) {
        if (forbidden.has(element.tagName.toUpperCase())) bad.push(element.outerHTML);
        for (const attribute of element.attributes) {
            if (/^on|^style$|^srcdoc$|^formaction$/i.test(attribute.name)) bad.push(element.outerHTML);
            if (/^(href|src|action|xlink:href)$/i.test(attribute.name)) {
                const protocol = new URL(attribute.value, location.href).protocol;
                if (!['http:', 'https:', 'mailto:'].includes(protocol)) bad.push(element.outerHTML);
            }
        }
    }
    return bad;
}"""


def rendered(open_page, sources, **page_options):
    """A page showing one stored conversation with one answer per source; returns (page, answers)."""
    page = open_page(conversations=[chat("Cases", *[("show me", source) for source in sources])], **page_options)
    if page.is_visible("#menu-toggle"):  # phone width: the history is in the drawer
        page.click("#menu-toggle")
    page.locator("#history .open", has_text="Cases").click()
    answers = page.locator(".message.assistant .content")
    answers.nth(len(sources) - 1).wait_for()
    return page, answers


def test_commonmark_cases(open_page):
    page, answers = rendered(open_page, list(CASES.values()))
    answer = {case: answers.nth(i) for i, case in enumerate(CASES)}

    assert answer["arithmetic"].locator("em").all_inner_texts() == ["this"]  # * between digits is literal
    assert answer["arithmetic"].inner_text().startswith("2*3*4 = 24, and 2**10 = 1024")
    for case in ("numbered", "numbered loose"):  # one list, numbered 1-3
        assert answer[case].locator("ol").count() == 1
        assert answer[case].locator("ol > li").all_inner_texts() == ["one", "two", "three"]
        assert answer[case].locator("ol").evaluate("ol => ol.start") == 1
    assert answer["numbered"].locator("li > p").count() == 0  # tight
    assert answer["numbered loose"].locator("li > p").count() == 3  # loose
    assert answer["nested"].locator(":scope > ul > li").count() == 2
    assert answer["nested"].locator(":scope > ul > li > ul > li").all_inner_texts() == ["apple", "pear"]
    assert answer["nested"].locator(":scope > ul > li > ol > li").all_inner_texts() == ["leek", "kale"]
    assert answer["loose"].locator(":scope > ul > li").first.locator("p").all_inner_texts() == [
        "first paragraph", "second paragraph of the same item"]
    table = answer["table"].locator("table")
    assert table.locator("thead th").all_inner_texts() == ["name", "count"]
    assert table.locator("tbody tr").count() == 2
    assert table.locator("tbody td").nth(3).inner_text() == "12"
    assert table.locator("tbody td").nth(3).evaluate("td => getComputedStyle(td).textAlign") == "right"
    assert answer["tools"].locator(".tool-call code").inner_text() == "2+3"
    assert answer["tools"].locator(".tool-output code").inner_text() == "5"
    assert answer["tools"].locator("strong").inner_text() == "5"
    assert answer["code"].locator("p code").inner_text() == "<b>"
    assert answer["code"].locator("pre code").inner_text().rstrip() == "print('<hi>')"
    assert answer["code"].locator("pre code").get_attribute("class") == "language-python"


@pytest.mark.parametrize("viewport", [PHONE, {"width": 1280, "height": 800}], ids=["phone", "desktop"])
def test_long_words_wide_tables_and_code_stay_inside_the_message(open_page, viewport):
    sources = ["x" * 400, "see https://example.com/" + "a" * 300 + " for more",
               "| " + " | ".join(f"column{i}" for i in range(30)) + " |\n|" + "---|" * 30 + "\n",
               "```\n" + "y" * 400 + "\n```"]
    page, answers = rendered(open_page, sources, viewport=viewport)
    overflowing = page.evaluate("""() => [...document.querySelectorAll('.message, #messages, body')]
        .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.className || e.id || e.tagName)""")
    assert overflowing == []
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    assert answers.nth(0).evaluate("e => e.getBoundingClientRect().height") > 40  # the word wrapped
    assert answers.nth(3).locator("pre").evaluate("pre => pre.scrollWidth > pre.clientWidth")  # code scrolls


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_links_are_readable_in_both_themes(open_page, dark):
    page, answers = rendered(open_page, ["read [the docs](https://example.com/docs) first"], dark=dark)
    link = answers.nth(0).locator("a")
    assert link.get_attribute("target") == "_blank" and "noopener" in link.get_attribute("rel")
    contrast = link.evaluate("""a => {
        const rgb = c => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
        const luminance = c => { const [r, g, b] = rgb(c).map(v => { v /= 255;
            return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
            return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
        const message = a.closest('.message');
        const [l1, l2] = [luminance(getComputedStyle(a).color), luminance(getComputedStyle(message).backgroundColor)];
        return (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    }""")
    assert contrast >= 4.5, f"link contrast {contrast:.2f} against its message"


def test_hostile_markdown_stays_inert(open_page):
    page, answers = rendered(open_page, HOSTILE)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    for i, source in enumerate(HOSTILE):
        assert answers.nth(i).evaluate(INERT) == [], source
    assert "<script>alert(1)</script>" in answers.nth(0).inner_text()  # shown as text, not dropped
    # the same inputs streamed in one character at a time, every intermediate state included
    streamed = page.evaluate("""([sources, inert]) => {
        const check = new Function('return ' + inert)();
        const bad = [];
        for (const source of sources) {
            const box = document.createElement('div');
            document.getElementById('messages').append(box);
            const view = new Markdown.StreamView(box);
            for (let end = 1; end <= source.length; end++) {
                view.update(source.slice(0, end));
                bad.push(...check(box));
            }
            view.finish(source);
            bad.push(...check(box));
            box.remove();
        }
        return bad;
    }""", [HOSTILE, INERT])
    assert streamed == []
    page.wait_for_timeout(100)
    assert dialogs == [] and page.evaluate("document.title") == "picochat"


def test_streaming_view_matches_a_full_render_and_keeps_finished_blocks(page):
    sources = [*CASES.values(), "\n\n".join(CASES.values()), "# Title\n\npara one\nline two\n\n> quote\n\n---\n\nend",
               "Intro:\n\n```\nunclosed fence\n\nstill code",
               "See [the docs][d] and [the code][c].\n\n[d]: https://example.com/d\n\nThen [the docs][d] again.\n\n"
               "[c]: https://example.com/c\n"]  # the last definition comes after its use
    mismatches = page.evaluate("""sources => {
        const shown = box => { const copy = box.cloneNode(true);
            for (const tail of copy.querySelectorAll('.tail')) tail.replaceWith(...tail.childNodes);
            return copy.innerHTML; };
        const bad = [];
        for (const [index, source] of sources.entries()) {
            const box = document.createElement('div');
            const view = new Markdown.StreamView(box);
            for (let end = 1; end <= source.length; end++) {
                const prefix = source.slice(0, end);
                view.update(prefix);
                // every frame shows what a full render would (a definition after its use aside)
                if (index < sources.length - 1 && shown(box) !== Markdown.render(prefix))
                    bad.push([prefix, shown(box), Markdown.render(prefix)]);
            }
            view.finish(source);
            if (shown(box) !== Markdown.render(source)) bad.push(['finish', source, shown(box)]);
        }
        return bad.slice(0, 3);
    }""", sources)
    assert mismatches == []

    # a finished block is left alone: once the next block's first line is complete, the first
    # paragraph moves above the tail, and that element survives every later update
    kept = page.evaluate("""() => {
        const box = document.createElement('div');
        const view = new Markdown.StreamView(box);
        let source = 'First paragraph.\\n\\nSecond paragraph.\\n';
        view.update(source);
        const first = box.querySelector('p');
        source += '\\nThird ';
        for (let i = 0; i < 200; i++) { source += 'word '; view.update(source); }
        source += '\\n\\n- a list\\n- of items';
        view.update(source);
        return [box.querySelector('p') === first, first.textContent, box.querySelector('.tail').textContent.includes('First')];
    }""")
    assert kept == [True, "First paragraph.", False]
