"""Chat page benchmark: what one animation frame costs while a 66 KB answer streams in, in headless
Chromium (Debian's /usr/bin/chromium, through Playwright), style and layout included.

    .venv/bin/python bench/chat_page.py [--kb 66] [--step 16] [--legacy OLD_RENDERER.js]

Two ways to show a growing answer, fed the same Markdown `--step` characters at a time:
- full: the whole answer re-rendered (markdown-it + DOMPurify) into the message every frame;
- incremental: the page's Markdown.StreamView, which renders only the unfinished last block.
`--legacy FILE` also times a classic-script renderer that defines Markdown.render (say the old
hand-written one: `git show bbeccfa:workbench/serve/static/markdown.js > /tmp/old.js`), full only.
Prints one line per method: ms per frame at 25/50/100% of the answer (median of 5) and, for the
incremental view, the median and worst frame over the whole stream.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATIC = REPO / "workbench" / "serve" / "static"
CHROMIUM = Path("/usr/bin/chromium")
ORIGIN = "http://picochat.bench"
MODEL_CARD = {"object": "list", "data": [{"id": "bench", "object": "model", "context_length": 2048}]}


def answer(kilobytes: int) -> str:
    """A chat answer of about `kilobytes` KB mixing what models write: headings, paragraphs, lists,
    code, tables, tool cards."""
    parts, section = [], 0
    while sum(map(len, parts)) < kilobytes * 1000:
        section += 1
        parts.append(f"## Step {section}\n\nWe now compute the **{section}th** term. Note that 2*3*4 = 24 and "
                     f"that `x_{section}` grows; see [the notes](https://example.com/{section}). " * 3)
        parts.append("\n".join(f"{i}. item {i} of step {section}, with *emphasis* and `code`" for i in range(1, 6)))
        parts.append("```python\n" + "\n".join(f"def f{section}_{i}(x):\n    return x * {i}" for i in range(4))
                     + "\n```")
        parts.append("| n | square | cube |\n|---|---:|---:|\n"
                     + "\n".join(f"| {n} | {n * n} | {n ** 3} |" for n in range(1, 5)))
        parts.append(f"```tool_call\n{section}*{section}\n```\n```tool_output\n{section * section}\n```")
    return "\n\n".join(parts)[: kilobytes * 1000]


MEASURE = """async ([source, step, incremental]) => {
    const box = document.createElement('article');
    box.className = 'message assistant';
    const content = document.createElement('div');
    content.className = 'content';
    box.append(content);
    document.getElementById('messages').append(box);
    const timed = (work) => {
        const started = performance.now();
        work();
        box.getBoundingClientRect();  // style and layout, as the frame would
        return performance.now() - started;
    };
    const median = (values) => values.slice().sort((a, b) => a - b)[Math.floor(values.length / 2)];
    const result = { full: {} };
    for (const share of [0.25, 0.5, 1]) {
        const prefix = source.slice(0, Math.round(source.length * share));
        result.full[share] = median([0, 1, 2, 3, 4].map(() => timed(() => { content.innerHTML = Markdown.render(prefix); })));
    }
    if (incremental) {
        const view = new Markdown.StreamView(content);
        const frames = [];
        for (let end = step; end < source.length + step; end += step) {
            const prefix = source.slice(0, end);
            frames.push([prefix.length, timed(() => view.update(prefix))]);
        }
        const near = (share) => median(frames.filter(([length]) => Math.abs(length - source.length * share) <= 2500)
                                            .map(([, ms]) => ms));
        result.incremental = { 0.25: near(0.25), 0.5: near(0.5), 1: near(1),
                               median: median(frames.map(([, ms]) => ms)), worst: Math.max(...frames.map(([, ms]) => ms)),
                               frames: frames.length, finish: timed(() => view.finish(source)) };
    }
    box.remove();
    return result;
}"""


def serve_static(renderer: Path | None):
    def handle(route):
        path = route.request.url[len(ORIGIN):].split("?")[0]
        if path == "/v1/models":
            return route.fulfill(json=MODEL_CARD)
        file = STATIC / "index.html" if path == "/" else STATIC / path.removeprefix("/static/")
        if renderer is not None and path == "/static/render.js":
            file = renderer
        if not file.is_file():
            return route.fulfill(status=404)
        return route.fulfill(body=file.read_bytes(), content_type=mimetypes.guess_type(file.name)[0] or "text/plain")
    return handle


def measure(browser, source: str, step: int, renderer: Path | None) -> dict:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.route(f"{ORIGIN}/**", serve_static(renderer))
    page = context.new_page()
    page.goto(ORIGIN + "/")
    page.wait_for_function("() => typeof Markdown !== 'undefined' && typeof Markdown.render === 'function'")
    result = page.evaluate(MEASURE, [source, step, renderer is None])
    context.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kb", type=int, default=66, help="answer size in KB (default 66)")
    parser.add_argument("--step", type=int, default=16, help="characters arriving per frame (default 16)")
    parser.add_argument("--legacy", type=Path, help="a classic-script renderer defining Markdown.render")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit("bench/chat_page.py needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    source = answer(args.kb)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        results = {"page": measure(browser, source, args.step, None)}
        if args.legacy:
            results["legacy"] = measure(browser, source, args.step, args.legacy)
        browser.close()

    def line(name: str, figures: dict) -> str:
        return (f"{name:<28} ms/frame at {len(source) // 4000} KB {figures['0.25']:7.2f}   "
                f"{len(source) // 2000} KB {figures['0.5']:7.2f}   {len(source) // 1000} KB {figures['1']:7.2f}")

    print(f"chat page, {len(source):,}-character answer, {args.step} characters per frame")
    if "legacy" in results:
        print(line(f"legacy full ({args.legacy.name})", results["legacy"]["full"]))
    print(line("full re-render (markdown-it)", results["page"]["full"]))
    incremental = results["page"]["incremental"]
    print(line("incremental (StreamView)", incremental)
          + f"   median {incremental['median']:.2f}, worst {incremental['worst']:.2f} over "
            f"{incremental['frames']} frames; final full render {incremental['finish']:.1f}")
    print(json.dumps({"chars": len(source), "step": args.step, **results}))


if __name__ == "__main__":
    main()
