// How answers become HTML: the vendored markdown-it (CommonMark plus GFM tables and strikethrough)
// parses, DOMPurify sanitizes what it produced. Both are files of this server (vendor/README.md);
// nothing is fetched from elsewhere.
//
// Safety in depth: markdown-it runs with raw HTML off (any tag in an answer is shown as text) and
// refuses javascript:/vbscript:/data: links; DOMPurify then keeps only plain document markup and
// http(s)/mailto links, so even a markdown-it bug cannot put a script or an event handler on the page.
//
// Markdown.render(source) -> safe HTML of a whole answer.
// new Markdown.StreamView(element): shows an answer that is still arriving. update(source) renders
// only the unfinished tail; the blocks before it are final and are rendered once (see update).
"use strict";

const Markdown = (() => {
  const md = window.markdownit({ html: false, linkify: true, breaks: true, typographer: false });
  // Images would load from wherever the answer points (a tracker, at best): `![alt](url)` shows as text.
  md.disable("image");

  // `2*3*4 = 24` is arithmetic, not "2<em>3</em>4": CommonMark lets `*` emphasize inside a word, which
  // chat models' math does not mean. A run of `*` with a digit on one side and a letter or digit on
  // the other stays literal.
  const isDigit = (char) => char >= "0" && char <= "9";
  const isWordChar = (char) => /^[\p{L}\p{N}]$/u.test(char);
  md.inline.ruler.before("emphasis", "arithmetic_star", (state, silent) => {
    const { src, pos } = state;
    if (src[pos] !== "*") return false;
    let end = pos;
    while (src[end] === "*") end++;
    const before = src[pos - 1] || "";
    const after = src[end] || "";
    if (!(isWordChar(before) && isWordChar(after) && (isDigit(before) || isDigit(after)))) return false;
    if (!silent) state.pending += src.slice(pos, end);
    state.pos = end;
    return true;
  });

  // The calculator's blocks (```tool_call and ```tool_output fences) are cards, not code listings.
  const TOOL_CARDS = { tool_call: "calculator", tool_output: "result" };
  const renderFence = md.renderer.rules.fence;
  md.renderer.rules.fence = (tokens, index, options, env, renderer) => {
    const token = tokens[index];
    const kind = token.info.trim();
    if (!Object.hasOwn(TOOL_CARDS, kind)) return renderFence(tokens, index, options, env, renderer);
    const code = md.utils.escapeHtml(token.content.replace(/\n$/, ""));
    return `<div class="tool ${kind.replace("_", "-")}"><span class="tool-label">${TOOL_CARDS[kind]}</span>`
      + `<code>${code}</code></div>\n`;
  };

  // Table columns align by class, not by a style attribute (the sanitizer drops every style).
  md.core.ruler.push("alignment_classes", (state) => {
    for (const token of state.tokens) {
      if (token.type !== "th_open" && token.type !== "td_open") continue;
      const align = /text-align:(left|center|right)/.exec(token.attrGet("style") || "");
      if (!align) continue;
      token.attrs = token.attrs.filter(([name]) => name !== "style");
      token.attrJoin("class", `align-${align[1]}`);
    }
  });

  const SANITIZER = {
    USE_PROFILES: { html: true },
    FORBID_TAGS: ["style", "img", "picture", "video", "audio", "source", "form", "input", "button",
      "select", "textarea"],
    FORBID_ATTR: ["style"],
    ALLOWED_URI_REGEXP: /^(?:https?|mailto):/i,
  };
  // Every link opens in a new tab that cannot reach back into this page.
  window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  });
  const sanitize = (html) => window.DOMPurify.sanitize(html, SANITIZER);

  function render(source, env = {}) {
    return sanitize(md.render(source, env));
  }

  const LINK_DEFINITION = /^ {0,3}\[[^\]]+\]:/m;

  // Offset in `text` where line number `line` (0-based) starts.
  function lineOffset(text, line) {
    let offset = 0;
    for (let i = 0; i < line; i++) offset = text.indexOf("\n", offset) + 1;
    return offset;
  }

  class StreamView {
    constructor(element) {
      this.element = element;
      this.tail = document.createElement("div");
      this.tail.className = "tail"; // display: contents, so it changes nothing in the layout
      element.replaceChildren(this.tail);
      this.done = 0; // length of the source prefix that is rendered for good, above the tail
      this.env = { references: {} }; // [label]: url definitions seen in that prefix
      this.checked = 0; // length of the source whose complete lines were already looked at
    }

    // Shows `source` (the answer so far; it only ever grows). Once a top-level block is followed by
    // the start of another in complete lines, it is final: CommonMark never reopens a closed block,
    // and text still to come can only change the last block. Finished blocks move above the tail
    // once; each update renders just the tail, so a frame costs the size of the last block, not of
    // the whole answer.
    update(source) {
      const complete = source.lastIndexOf("\n") + 1;
      if (complete > this.checked) {
        this.checked = complete;
        this.commitFinishedBlocks(source.slice(this.done, complete));
      }
      this.tail.innerHTML = render(source.slice(this.done), { references: { ...this.env.references } });
    }

    commitFinishedBlocks(lines) {
      const starts = md.parse(lines, { references: { ...this.env.references } })
        .filter((token) => token.level === 0 && token.nesting !== -1 && token.map)
        .map((token) => token.map[0]);
      if (starts.length < 2) return;
      const finished = lines.slice(0, lineOffset(lines, starts[starts.length - 1]));
      this.tail.insertAdjacentHTML("beforebegin", render(finished, this.env));
      this.done += finished.length;
    }

    // The whole answer has arrived. The view already shows what a full render would, except where
    // a [label]: url definition came after a block that uses it: only then render it all again.
    finish(source) {
      if (LINK_DEFINITION.test(source)) this.element.innerHTML = render(source);
      else this.update(source);
    }
  }

  return { render, StreamView };
})();
