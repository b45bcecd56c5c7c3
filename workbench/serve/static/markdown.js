// A small Markdown renderer: enough for chat answers, with no network and no dependency.
// Safety first: every piece of text is HTML-escaped before any markup is added, and links only
// ever point at http(s) addresses.
//
// Block level: fenced code (``` with an info string; "tool_call" and "tool_output" fences become
// tool cards), headings, unordered and ordered lists, block quotes, horizontal rules, paragraphs.
// Inline: `code`, **bold**, *italic* / _italic_, ~~strike~~, [links](url) to web addresses only.
"use strict";

const Markdown = (() => {
  function escapeHtml(text) {
    return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }

  // Inline markup on one escaped line. Code spans are cut out first so nothing inside them changes.
  function inline(text) {
    const codes = [];
    let html = escapeHtml(text).replace(/`([^`]+)`/g, (_, code) => {
      codes.push(code);
      return `\u0000${codes.length - 1}\u0000`;
    });
    html = html
      .replace(/\*\*(.+?)\*\*/g, "<strong>$1</strong>")
      .replace(/__(.+?)__/g, "<strong>$1</strong>")
      .replace(/(^|[^*])\*([^*\s](?:[^*]*[^*\s])?)\*(?!\*)/g, "$1<em>$2</em>")
      .replace(/(^|[^\w])_([^_\s](?:[^_]*[^_\s])?)_(?!\w)/g, "$1<em>$2</em>")
      .replace(/~~(.+?)~~/g, "<del>$1</del>")
      .replace(/\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g,
        '<a href="$2" target="_blank" rel="noopener noreferrer">$1</a>');
    return html.replace(/\u0000(\d+)\u0000/g, (_, i) => `<code>${codes[Number(i)]}</code>`);
  }

  function codeBlock(info, lines) {
    const code = escapeHtml(lines.join("\n"));
    if (info === "tool_call") {
      return `<div class="tool tool-call"><span class="tool-label">calculator</span><code>${code}</code></div>`;
    }
    if (info === "tool_output") {
      return `<div class="tool tool-output"><span class="tool-label">result</span><code>${code}</code></div>`;
    }
    const language = info ? ` data-language="${escapeHtml(info)}"` : "";
    return `<pre${language}><code>${code}</code></pre>`;
  }

  function render(source) {
    const lines = source.replace(/\r\n?/g, "\n").split("\n");
    const out = [];
    let paragraph = [];
    let list = null; // {tag, items}

    const flushParagraph = () => {
      if (paragraph.length) out.push(`<p>${paragraph.map(inline).join("<br>")}</p>`);
      paragraph = [];
    };
    const flushList = () => {
      if (list) out.push(`<${list.tag}>${list.items.map((item) => `<li>${inline(item)}</li>`).join("")}</${list.tag}>`);
      list = null;
    };
    const flush = () => { flushParagraph(); flushList(); };

    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const fence = line.match(/^\s*```\s*([\w+-]*)\s*$/);
      if (fence) {
        flush();
        const body = [];
        i++;
        while (i < lines.length && !/^\s*```\s*$/.test(lines[i])) body.push(lines[i++]);
        out.push(codeBlock(fence[1], body)); // an unclosed fence (still streaming) runs to the end
        continue;
      }
      const heading = line.match(/^(#{1,6})\s+(.*)$/);
      if (heading) {
        flush();
        const level = heading[1].length;
        out.push(`<h${level}>${inline(heading[2])}</h${level}>`);
        continue;
      }
      if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) { flush(); out.push("<hr>"); continue; }
      const bullet = line.match(/^\s*[-*+]\s+(.*)$/);
      const numbered = line.match(/^\s*\d+[.)]\s+(.*)$/);
      if (bullet || numbered) {
        flushParagraph();
        const tag = bullet ? "ul" : "ol";
        if (!list || list.tag !== tag) { flushList(); list = { tag, items: [] }; }
        list.items.push((bullet || numbered)[1]);
        continue;
      }
      const quote = line.match(/^\s*>\s?(.*)$/);
      if (quote) { flush(); out.push(`<blockquote>${inline(quote[1])}</blockquote>`); continue; }
      if (!line.trim()) { flush(); continue; }
      if (list) flushList();
      paragraph.push(line);
    }
    flush();
    return out.join("\n");
  }

  return { render, escapeHtml };
})();
