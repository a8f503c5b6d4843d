// The Markdown that models write, rendered as DOM nodes — never as an HTML string, so nothing in an answer can
// become markup. A deliberate subset: paragraphs, headings, fenced code, inline code, bold, italic, bullet and
// numbered lists, and links to http(s) addresses only. Anything else stays as the text it was.
// It is re-run on the whole text as an answer streams in; an unclosed fence renders as code until it closes.

const FENCE = /^\s*(```|~~~)\s*([\w+.#-]*)\s*$/;
const closes = (line, fence) => line.trim() === fence; // a closing fence carries no language
const HEADING = /^(#{1,4})\s+(.*)$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;
// Inline constructs, tried together; the earliest match wins (code first at equal positions: its content is literal).
const INLINE = [
  ["code", /`([^`\n]+)`/],
  // A URL may hold balanced parentheses (Wikipedia's do): one level.
  ["link", /\[([^\]\n]+)\]\((https?:\/\/(?:[^\s()]|\([^\s()]*\))+)\)/],
  ["strong", /\*\*(?=\S)([^\n]*?\S)\*\*|(?<![\w])__(?=\S)([^\n]*?\S)__(?![\w])/],
  ["em", /\*(?=[^\s*])([^*\n]*?[^\s*])\*|(?<![\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?![\w])/],
];

// Code highlighting without a library: comments, strings, numbers and the keywords of the languages models
// write most, as <span class="tok-…"> around text nodes. One lexer for all: wrong at the edges of some
// languages, never wrong about the text (every character stays, in order, as text).
const KEYWORDS = new Set((
  "and as async await break case catch class const continue def default del do elif else enum except export " +
  "extends false False finally fn for from func function go if impl import in interface is let match mut new nil " +
  "None not null or package pub raise return self static struct switch this throw true True try type typeof use " +
  "var void while with yield select from where group by order insert update delete create table join on limit"
).split(" "));
const TOKEN = new RegExp([
  String.raw`(\/\/[^\n]*|#[^\n]*|--[^\n]*|\/\*[\s\S]*?(?:\*\/|$))`, // 1 comment
  String.raw`("(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?|\`(?:[^\`\\]|\\.)*\`?)`, // 2 string
  String.raw`(\b\d[\d_]*(?:\.\d+)?(?:e[+-]?\d+)?\b|\b0x[\da-f]+\b)`, // 3 number
  String.raw`([A-Za-z_][\w]*)`, // 4 word (a keyword or not)
].join("|"), "gi");

/** `code` as text nodes and highlight spans; `language` only decides whether to try. */
export function highlight(code, language) {
  if (!language) return [document.createTextNode(code)];
  const nodes = [];
  let last = 0;
  const text = (t) => t && nodes.push(document.createTextNode(t));
  const span = (kind, t) => {
    const node = el("span", [document.createTextNode(t)]);
    node.className = `tok-${kind}`;
    nodes.push(node);
  };
  for (const match of code.matchAll(TOKEN)) {
    const [whole, comment, string, number, word] = match;
    // A keyword as written, or in capitals (SQL's SELECT); any other name is part of the surrounding text.
    const keyword = word !== undefined && (KEYWORDS.has(word) || (word === word.toUpperCase() && KEYWORDS.has(word.toLowerCase())));
    if (word !== undefined && !keyword) {
      continue;
    }
    text(code.slice(last, match.index));
    if (comment !== undefined) span("comment", whole);
    else if (string !== undefined) span("string", whole);
    else if (number !== undefined) span("number", whole);
    else span("keyword", whole);
    last = match.index + whole.length;
  }
  text(code.slice(last));
  return nodes;
}

function el(tag, children = []) {
  const node = document.createElement(tag);
  node.append(...children);
  return node;
}

/** Inline Markdown of one block's text, as nodes. */
export function inline(text) {
  const nodes = [];
  let rest = text;
  while (rest) {
    let best = null;
    for (const [kind, pattern] of INLINE) {
      const match = pattern.exec(rest);
      if (match && (best === null || match.index < best.match.index)) best = { kind, match };
    }
    if (best === null) {
      nodes.push(document.createTextNode(rest));
      break;
    }
    const { kind, match } = best;
    if (match.index > 0) nodes.push(document.createTextNode(rest.slice(0, match.index)));
    const inner = match[1] ?? match[2];
    if (kind === "code") {
      nodes.push(el("code", [document.createTextNode(inner)]));
    } else if (kind === "link") {
      const a = el("a", inline(inner));
      a.href = match[2];
      a.rel = "noopener noreferrer nofollow";
      a.target = "_blank";
      nodes.push(a);
    } else {
      nodes.push(el(kind, inline(inner)));
    }
    rest = rest.slice(match.index + match[0].length);
  }
  return nodes;
}

/** `text` as a fragment of block nodes (p, h3-h6, pre>code, ul/ol>li). */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const lines = String(text).split("\n");
  let paragraph = [];
  let list = null; // {node, ordered}

  const endParagraph = () => {
    if (paragraph.length) fragment.append(el("p", inline(paragraph.join("\n"))));
    paragraph = [];
  };
  const endList = () => {
    list = null;
  };

  for (let i = 0; i < lines.length; i += 1) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      endParagraph();
      endList();
      const body = [];
      let j = i + 1;
      while (j < lines.length && !closes(lines[j], fence[1])) {
        body.push(lines[j]);
        j += 1;
      }
      const code = el("code", highlight(body.join("\n"), fence[2]));
      if (fence[2]) code.dataset.language = fence[2];
      fragment.append(el("pre", [code]));
      i = j; // the closing fence (or the end, while it streams)
      continue;
    }
    if (!line.trim()) {
      endParagraph();
      // A blank line ends a list unless the next item continues it (a "loose" list, as models often write).
      let next = i + 1;
      while (next < lines.length && !lines[next].trim()) next += 1;
      const following = next < lines.length ? lines[next] : "";
      const sameKind = list && (list.ordered ? NUMBERED.test(following) : BULLET.test(following));
      if (!sameKind) endList();
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      endParagraph();
      endList();
      fragment.append(el(`h${heading[1].length + 2}`, inline(heading[2])));
      continue;
    }
    const bullet = BULLET.exec(line);
    const numbered = bullet ? null : NUMBERED.exec(line);
    if (bullet || numbered) {
      endParagraph();
      const ordered = Boolean(numbered);
      if (!list || list.ordered !== ordered) {
        list = { node: el(ordered ? "ol" : "ul"), ordered };
        if (ordered && numbered[1] !== "1") list.node.start = Number(numbered[1]);
        fragment.append(list.node);
      }
      list.node.append(el("li", inline(bullet ? bullet[1] : numbered[2])));
      continue;
    }
    if (list && /^\s{2,}\S/.test(line)) {
      // A continuation of the last item.
      list.node.lastChild.append(document.createTextNode("\n"), ...inline(line.trim()));
      continue;
    }
    endList();
    paragraph.push(line);
  }
  endParagraph();
  return fragment;
}
