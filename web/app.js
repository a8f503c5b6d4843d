// The chat page: sign in, keep conversations in localStorage, stream answers over AppSync Events.
// Text only ever enters the page as text nodes: the user's as typed, the model's through markdown.js, which
// builds elements itself and never parses HTML.

import { Challenge, answerChallenge, describe, restore, signIn } from "./cognito.js";
import { EventsClient } from "./events.js";
import { renderMarkdown } from "./markdown.js";
import { StreamAssembler } from "./stream.js";

const $ = (id) => document.getElementById(id);
const ANSWER_TIMEOUT_MS = 90_000;
// AppSync refuses an event over 240 KB (runtime/appsync_publish.py MAX_EVENT_BYTES; a test keeps them equal). A chat
// request is one event and carries the conversation so far, so the page measures it before sending.
const MAX_EVENT_BYTES = 245760;
// A hole in an answer's seqs that the live stream has not filled by then is asked for again (`resume`): the
// gateway's journal lags the live stream by up to a second.
const GAP_WAIT_MS = 1500;

const state = {
  config: null,
  session: null,
  challenge: null, // a Cognito sign-in step in progress (new password, MFA)
  events: null,
  conversations: [], // [{id, title, updatedAt, messages: [{role, text, status, cached, model, error}]}]
  currentId: null,
  subscriptions: new Map(), // conversationId -> {unsubscribe}
  // requestId -> {message, conversationId, channel, assembler, stopped, node, textNode, metaNode, timer, frame,
  // gapTimer}
  pending: new Map(),
  usageRequest: null, // the requestId of the `usage` action asked at sign-in
  countdown: null,
  storageWarned: false, // the "storage is full" notice is shown once per page
  limits: { window: null, month: null },
};

// -- storage -------------------------------------------------------------------------------------------

function storageKey() {
  return `aigw.conversations.${state.session.sub}`;
}

function loadConversations() {
  try {
    state.conversations = JSON.parse(localStorage.getItem(storageKey()) || "[]");
  } catch {
    state.conversations = [];
  }
  state.currentId = localStorage.getItem(`${storageKey()}.current`);
}

function saveConversations() {
  const kept = state.conversations.map((c) => ({
    ...c,
    messages: c.messages.map((m) => (m.status === "streaming" ? { ...m, status: "error", error: "Interrupted." } : m)),
  }));
  // The browser's storage is a few MB: when it is full, the oldest conversations are the ones not kept
  // (they stay on screen until the page is reloaded), and the page says so once.
  let dropped = 0;
  for (;;) {
    try {
      localStorage.setItem(storageKey(), JSON.stringify(kept));
      break;
    } catch (err) {
      if (kept.length <= 1) return; // not even the newest fits: nothing more to drop
      kept.pop();
      dropped += 1;
    }
  }
  if (dropped && !state.storageWarned && !state.countdown) {
    state.storageWarned = true;
    notice("This browser's storage is full: the oldest conversations will not be kept after a reload.");
  }
  try {
    if (state.currentId) localStorage.setItem(`${storageKey()}.current`, state.currentId);
  } catch {
    // Which conversation was open is a nicety; the conversations themselves were saved above.
  }
}

function current() {
  return state.conversations.find((c) => c.id === state.currentId) || null;
}

function newConversation() {
  // An empty conversation is already new: it is reused (and moved to the top) rather than another added.
  const empty = state.conversations.find((c) => c.messages.length === 0);
  if (empty) {
    state.conversations = [empty, ...state.conversations.filter((c) => c !== empty)];
    state.currentId = empty.id;
    saveConversations();
    return empty;
  }
  const conversation = { id: crypto.randomUUID(), title: "New conversation", updatedAt: Date.now(), messages: [] };
  state.conversations.unshift(conversation);
  state.currentId = conversation.id;
  saveConversations();
  return conversation;
}

// -- rendering -----------------------------------------------------------------------------------------

function renderConversationList() {
  const list = $("conversation-list");
  list.replaceChildren();
  for (const c of state.conversations) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "title";
    button.textContent = c.title;
    button.title = c.title; // the whole title, where the list cuts it
    if (c.id === state.currentId) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => switchTo(c.id));
    const rename = iconButton("✎", `Rename “${c.title}”`, () => startRename(item, c));
    const remove = iconButton("✕", `Delete “${c.title}”`, () => deleteConversation(c.id));
    item.append(button, rename, remove);
    list.append(item);
  }
}

function iconButton(symbol, label, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "icon";
  button.textContent = symbol;
  button.setAttribute("aria-label", label);
  button.title = label;
  button.addEventListener("click", onClick);
  return button;
}

function startRename(item, conversation) {
  const input = document.createElement("input");
  input.value = conversation.title;
  input.setAttribute("aria-label", "Conversation name");
  input.maxLength = 120;
  let done = false;
  const end = (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (save && title) {
      conversation.title = title;
      conversation.renamed = true;
      saveConversations();
    }
    renderConversationList();
    if (conversation.id === state.currentId) $("conversation-title").textContent = conversation.title;
    // The input is gone: keep the keyboard where it was, on this conversation's entry.
    const index = state.conversations.indexOf(conversation);
    const entry = $("conversation-list").querySelectorAll(".title")[index];
    if (entry) entry.focus();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      end(true);
    } else if (e.key === "Escape") {
      e.preventDefault();
      end(false);
    }
  });
  input.addEventListener("blur", () => {
    if (!done) end(true);
  });
  item.replaceChildren(input);
  input.focus();
  input.select();
}

function deleteConversation(id) {
  const conversation = state.conversations.find((c) => c.id === id);
  if (!conversation || !confirm(`Delete “${conversation.title}”? It is kept only in this browser.`)) return;
  for (const [requestId, p] of state.pending) {
    if (p.conversationId === id) finish(requestId, "stopped");
  }
  const subscription = state.subscriptions.get(id);
  if (subscription) subscription.unsubscribe();
  state.subscriptions.delete(id);
  state.conversations = state.conversations.filter((c) => c.id !== id);
  if (state.currentId === id) state.currentId = state.conversations[0] ? state.conversations[0].id : null;
  if (!current()) newConversation();
  saveConversations();
  renderConversationList();
  renderMessages();
  $("new-conversation").focus();
}

function messageNode(message) {
  const item = document.createElement("li");
  item.className = `message ${message.role}`;
  const text = document.createElement("div");
  text.className = "text";
  showText(text, message);
  const meta = document.createElement("span");
  meta.className = "meta";
  item.append(text, meta);
  renderMeta(message, item, meta);
  return { node: item, textNode: text, metaNode: meta };
}

/** Renders a streaming answer's text at most once per frame, however many deltas arrive in between. */
function scheduleText(pending) {
  if (pending.frame) return;
  pending.frame = requestAnimationFrame(() => {
    pending.frame = 0;
    if (pending.textNode) showText(pending.textNode, pending.message);
  });
}

/** A message's text: the user's as typed, the model's as (a safe subset of) Markdown, each code block with
 * its own copy button. */
function showText(node, message) {
  if (message.role !== "assistant") {
    node.textContent = message.text || "";
    return;
  }
  node.replaceChildren(renderMarkdown(message.text || ""));
  for (const pre of node.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    pre.append(copyButton("Copy", "Copy the code", () => (code ? code.textContent : "")));
  }
}

/** A button that puts `text()` on the clipboard and says so; none where the page has no clipboard (http on
 * another host than localhost is not a secure context). */
function copyButton(label, name, text) {
  if (!navigator.clipboard) return document.createTextNode("");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.textContent = label;
  button.setAttribute("aria-label", name);
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text());
      button.textContent = "Copied";
    } catch {
      button.textContent = "Not copied";
    }
    setTimeout(() => (button.textContent = label), 2000);
  });
  return button;
}

function renderMeta(message, node, meta) {
  meta.replaceChildren();
  node.classList.toggle("error", message.status === "error");
  if (message.role !== "assistant") {
    meta.hidden = true;
    return;
  }
  meta.hidden = false;
  // The answer's own actions, beside its meta line (not in it: the meta line is what is said about the answer).
  node.querySelector(":scope > .actions")?.remove();
  if (message.status !== "streaming" && message.text) {
    const actions = document.createElement("span");
    actions.className = "actions";
    actions.append(copyButton("Copy", "Copy the answer", () => message.text));
    node.append(actions);
  }
  if (message.cached) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = "cached answer";
    badge.title = "Served from the prepared answer cache";
    meta.append(badge);
  }
  const parts = [];
  if (message.model) {
    parts.push((state.config && state.config.modelNames && state.config.modelNames[message.model]) || message.model);
    meta.title = message.model; // the id, for who needs it
  }
  if (message.status === "streaming") parts.push("answering…");
  if (message.status === "stopped") {
    parts.push(message.charged != null ? `stopped · ${message.charged.toLocaleString()} tokens charged` : "stopped");
  }
  if (message.status === "error") parts.push(message.error || "Failed.");
  meta.append(document.createTextNode(parts.join(" · ")));
}

function renderMessages() {
  const conversation = current();
  const list = $("messages");
  list.replaceChildren();
  $("conversation-title").textContent = conversation ? conversation.title : "Conversation";
  if (!conversation) return;
  for (const message of conversation.messages) {
    const parts = messageNode(message);
    list.append(parts.node);
    for (const [, p] of state.pending) {
      if (p.message === message) Object.assign(p, parts);
    }
  }
  list.scrollTop = list.scrollHeight;
  updateStop();
}

function setBudget(remaining) {
  if (!remaining) return;
  for (const key of ["window", "month"]) {
    const value = remaining[key];
    if (typeof value !== "number") continue;
    // The limit is the user's tier's, when config names it; else the most seen so far.
    const limit = state.limits[key] ?? value;
    const max = Math.max(limit, value, 1);
    const meter = $(`budget-${key}`);
    meter.max = max;
    meter.value = value;
    meter.low = max * 0.2;
    meter.optimum = max;
    $(`budget-${key}-text`).textContent = `${value.toLocaleString()} tokens left`;
    if (state.limits[key] == null) state.limits[key] = value;
  }
}

/** Nothing known yet (a new sign-in): the bars full, no figures. */
function resetBudget() {
  for (const key of ["window", "month"]) {
    const meter = $(`budget-${key}`);
    meter.removeAttribute("low");
    meter.removeAttribute("optimum");
    meter.max = 1;
    meter.value = 1;
    $(`budget-${key}-text`).textContent = "–";
  }
  showTeamBudget(null);
}

/** The answer to the `usage` action asked at sign-in: the user's own limits (an override when one applies, not
 * the tier's), what is left of them, and the team's month. */
function showUsage(event) {
  state.usageRequest = null;
  if (event.limits) state.limits = { window: event.limits.window ?? null, month: event.limits.month ?? null };
  setBudget(event.remaining);
  showTeamBudget(event.budgets);
}

const USD = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });

/** "You: $0.80 left this month · Team platform: $4.20 left this month": the user's own USD month and their team's
 * budget (dollars, tokens, window), where they have them. */
function showTeamBudget(budgets) {
  const line = $("budget-team");
  const team = budgets && budgets.team;
  const mine = budgets && budgets.user;
  if (!team && !mine) {
    if (budgets === null) line.hidden = true; // an event without budgets says nothing new
    return;
  }
  const sentences = [];
  if (mine && typeof mine.usd === "number") sentences.push(`You: ${USD.format(Math.max(0, mine.usd))} left this month`);
  if (team) {
    const parts = [];
    if (typeof team.usd === "number") parts.push(`${USD.format(Math.max(0, team.usd))} left this month`);
    if (typeof team.tokens === "number") parts.push(`${team.tokens.toLocaleString()} tokens left this month`);
    if (typeof team.window === "number") parts.push(`${team.window.toLocaleString()} tokens left in 10 minutes`);
    if (parts.length) sentences.push(`Team ${team.name}: ${parts.join(", ")}`);
  }
  if (sentences.length === 0) return;
  line.textContent = sentences.join(" · ");
  line.hidden = false;
}

/** Asks the gateway for the user's usage (`action: usage`), answered on the current conversation's channel. */
async function askUsage() {
  const conversation = current();
  if (!conversation || !state.events) return;
  const requestId = crypto.randomUUID();
  state.usageRequest = requestId;
  try {
    await ensureSubscribed(conversation.id);
    await state.events.publish(`/chat/${state.session.sub}/${conversation.id}`, [{ action: "usage", requestId }]);
  } catch {
    // The bars then fill from the first answer's `end`, as before.
  }
}

function tierLimits() {
  const tiers = state.config.tiers || [];
  const groups = new Set(state.session.groups);
  const member = tiers.filter((t) => groups.has(t.name)).sort((a, b) => a.precedence - b.precedence);
  const tier = member[0] || tiers.find((t) => t.name === state.config.defaultTier);
  state.limits = tier ? { window: tier.windowTokens, month: tier.monthlyTokens } : { window: null, month: null };
  const models = tier ? tier.models : state.config.models || [];
  const picker = $("model");
  const named = tier && tier.defaultModel && models.length > 1; // with one model, "Default" is that model
  // People's names from the model catalog (config.json `modelNames`); the id stays the value sent and the tooltip.
  const names = state.config.modelNames || {};
  const label = (id) => names[id] || id;
  picker.replaceChildren(new Option(named ? `Default (${label(tier.defaultModel)})` : "Default", ""));
  for (const m of models) {
    const option = new Option(label(m), m);
    option.title = m;
    picker.append(option);
  }
  const saved = localStorage.getItem("aigw.model") || "";
  picker.value = models.includes(saved) ? saved : "";
}

// -- notices and errors --------------------------------------------------------------------------------

function nextUtcMonth(now = new Date()) {
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1));
}

function clearNotice() {
  clearInterval(state.countdown);
  state.countdown = null;
  $("notice").hidden = true;
  $("notice").textContent = "";
  $("send").disabled = false;
}

function notice(text) {
  clearNotice();
  $("notice").textContent = text;
  $("notice").hidden = false;
}

function rateLimited(seconds) {
  clearNotice();
  const until = Date.now() + Math.max(1, Math.ceil(seconds)) * 1000;
  const el = $("notice");
  el.hidden = false;
  $("send").disabled = true;
  // Announced once; the seconds then count down in a part screen readers are not told about every second.
  const counter = document.createElement("span");
  counter.setAttribute("aria-live", "off");
  el.replaceChildren("You're sending faster than your plan allows. You can send again in ", counter, " s.");
  const tick = () => {
    const left = Math.ceil((until - Date.now()) / 1000);
    if (left <= 0) {
      clearNotice();
      return;
    }
    counter.textContent = String(left);
  };
  tick();
  state.countdown = setInterval(tick, 1000);
}

function humanError(event) {
  switch (event.code) {
    case "rate_limited":
      return "Rate limited for now.";
    case "quota_exhausted": {
      const reset = nextUtcMonth().toLocaleDateString(undefined, { year: "numeric", month: "long", day: "numeric", timeZone: "UTC" });
      if (event.scope === "team") return `Your team's budget for this month is used up. It resets on ${reset} (UTC).`;
      if (event.scope === "stack") return `The gateway's budget for this month is used up. It resets on ${reset} (UTC).`;
      return `This month's allowance is used up. It resets on ${reset} (UTC).`;
    }
    case "stream_gap":
      return "Part of this answer was lost while the connection was down. Ask again for the whole answer.";
    case "invalid_request":
      // The gateway's reason is written for people ("larger than your rolling-window limit allows; ...").
      return event.message ? `Not sent: ${event.message}.` : "The request was refused as invalid.";
    case "forbidden":
      return "Not allowed.";
    case "model_not_allowed":
      return "Your plan does not include that model. Pick another one, or Default.";
    case "model_throttled":
      return "The model is busy right now. Try again in a moment.";
    case "model_error":
      return "The model failed to answer. Try again.";
    default:
      return "Something went wrong on our side. Try again.";
  }
}

// -- chat ----------------------------------------------------------------------------------------------

async function ensureSubscribed(conversationId) {
  if (state.subscriptions.has(conversationId)) return;
  const channel = `/responses/${state.session.sub}/${conversationId}`;
  const subscription = await state.events.subscribe(channel, onAnswerEvent);
  state.subscriptions.set(conversationId, subscription);
}

function historyFor(conversation) {
  // Only complete exchanges are sent back; a failed answer drops its question too.
  const messages = [];
  const list = conversation.messages;
  for (let i = 0; i + 1 < list.length; i += 1) {
    const q = list[i];
    const a = list[i + 1];
    if (q.role === "user" && a.role === "assistant" && a.status === "done" && a.text) {
      messages.push({ role: "user", content: [{ text: q.text }] }, { role: "assistant", content: [{ text: a.text }] });
      i += 1;
    }
  }
  return messages;
}

/** The chat request for `text` in `conversation` (null: a new one), as it will be published. */
function chatRequest(conversation, text, model, requestId) {
  const messages = [...(conversation ? historyFor(conversation) : []), { role: "user", content: [{ text }] }];
  const request = { requestId, conversationId: conversation ? conversation.id : crypto.randomUUID(), messages };
  if (model) request.modelId = model;
  return request;
}

/** Why `text` cannot be sent in the current conversation (its request is over AppSync's limit), or null.
 * The gateway's words (aigw/client.py says the same), measured as published: UTF-8 bytes of compact JSON. */
function tooLong(text) {
  const request = chatRequest(current(), text, $("model").value, crypto.randomUUID());
  const size = new TextEncoder().encode(JSON.stringify(request)).length;
  if (size <= MAX_EVENT_BYTES) return null;
  return `message too long: ${Math.ceil(size / 1024)} KB, the limit is ${MAX_EVENT_BYTES / 1024} KB per request ` +
    "(the conversation so far is sent with each message); shorten it or start a new conversation";
}

async function send(text) {
  clearNotice(); // the last problem is history once the user tries again (a countdown blocks sending anyway)
  const conversation = current() || newConversation();
  const model = $("model").value;
  localStorage.setItem("aigw.model", model);
  const requestId = crypto.randomUUID();
  const request = chatRequest(conversation, text, model, requestId); // the history before this question
  const question = { role: "user", text, status: "done" };
  const answer = { role: "assistant", text: "", status: "streaming", cached: false, model: model || "" };
  if (conversation.messages.length === 0 && !conversation.renamed) conversation.title = text.slice(0, 60);
  conversation.messages.push(question, answer);
  conversation.updatedAt = Date.now();
  const channel = `/chat/${state.session.sub}/${conversation.id}`;
  state.pending.set(requestId, {
    message: answer, conversationId: conversation.id, channel, assembler: new StreamAssembler(), stopped: false,
  });
  renderConversationList();
  renderMessages();

  const pending = state.pending.get(requestId);
  pending.timer = setTimeout(() => {
    if (pending.stopped) finish(requestId, "stopped");
    else finish(requestId, "error", "No answer arrived in time.");
  }, ANSWER_TIMEOUT_MS);
  try {
    await ensureSubscribed(conversation.id);
    await state.events.publish(channel, [request]);
    // A refused request is answered with a typed `error` event on the responses channel.
  } catch (err) {
    finish(requestId, "error", refusalText(err));
  }
}

/** What a person is told when the publish itself fails: words, never the server's exception text. */
function refusalText(err) {
  switch (err.errorType) {
    case undefined:
      return "Could not send: " + (err.message || "connection problem") + "."; // ours: "connection closed"
    case "BadRequestException":
      return `Not sent: the gateway refused the request as malformed or too large (at most ${MAX_EVENT_BYTES / 1024} KB ` +
        "per request, the conversation so far included).";
    case "UnauthorizedException":
      return "Not sent: your sign-in was not accepted. Sign in again.";
    default:
      return "Could not send. Try again.";
  }
}

function finish(requestId, status, error) {
  const pending = state.pending.get(requestId);
  if (!pending) return;
  clearTimeout(pending.timer);
  clearTimeout(pending.gapTimer);
  if (pending.frame) cancelAnimationFrame(pending.frame);
  if (pending.textNode && !pending.stopped) showText(pending.textNode, pending.message);
  state.pending.delete(requestId);
  pending.message.status = status;
  if (error) pending.message.error = error;
  if (pending.node) renderMeta(pending.message, pending.node, pending.metaNode);
  updateStop();
  saveConversations();
}

/** Stop the current conversation's answers in progress: the text stays as it is, and the gateway is asked to
 * cancel (`action: cancel`), so the model stops within about a second and only what it wrote is charged; the
 * `end` (`stopReason: cancelled`) then says how much, and updates the budget. */
function stopCurrent() {
  for (const [requestId, p] of state.pending) {
    if (p.conversationId !== state.currentId || p.stopped) continue;
    act(p, { action: "cancel", requestId });
    if (p.frame) cancelAnimationFrame(p.frame);
    p.frame = 0;
    if (p.textNode) showText(p.textNode, p.message); // what had arrived, and no more
    p.stopped = true;
    p.message.status = "stopped";
    if (p.node) renderMeta(p.message, p.node, p.metaNode);
  }
  saveConversations();
  updateStop();
  $("prompt").focus();
}

/** Stop, and the message list's aria-busy, follow whether the current conversation has an answer streaming. */
function updateStop() {
  const streaming = [...state.pending.values()].some((p) => p.conversationId === state.currentId && !p.stopped);
  const stop = $("stop");
  // A keyboard user on Stop when it goes away continues in the message box, not on <body>.
  if (!streaming && document.activeElement === stop) $("prompt").focus();
  stop.hidden = !streaming;
  $("messages").setAttribute("aria-busy", String(streaming));
}

/** An action on a request's answer (resume, cancel), published on its chat channel. A failure is left to the
 * next reconnect (which resumes) or the answer's timeout: the person already sees what happened. */
function act(pending, action) {
  if (!state.events) return;
  state.events.publish(pending.channel, [action]).catch(() => {});
}

function resume(requestId) {
  const pending = state.pending.get(requestId);
  if (pending) act(pending, { action: "resume", requestId, afterSeq: pending.assembler.lastSeq });
}

/** After a reconnect every answer still in progress is resumed after the last event it had, so nothing
 * published while the socket was down is lost (the assembler drops what arrives twice). */
function resumeAll() {
  for (const [requestId] of state.pending) resume(requestId);
}

function onAnswerEvent(event) {
  if (event.type === "usage") {
    if (event.requestId === state.usageRequest) showUsage(event);
    return;
  }
  const pending = state.pending.get(event.requestId);
  if (!pending) return;
  for (const ready of pending.assembler.offer(event)) applyEvent(pending, ready);
  if (!state.pending.has(event.requestId)) return;
  if (!pending.assembler.hasGap) {
    clearTimeout(pending.gapTimer);
    pending.gapTimer = null;
  } else if (!pending.gapTimer) {
    pending.gapTimer = setTimeout(() => {
      pending.gapTimer = null;
      if (pending.assembler.hasGap) resume(event.requestId);
    }, GAP_WAIT_MS);
  }
}

/** One event of an answer, in seq order and once (the assembler's doing). */
function applyEvent(pending, event) {
  const message = pending.message;
  if (event.type === "end" || event.type === "error") showTeamBudget(event.budgets);
  if (pending.stopped) {
    if (event.type === "end" || event.type === "error") {
      setBudget(event.remaining);
      if (event.usage) message.charged = (event.usage.input || 0) + (event.usage.output || 0);
      finish(event.requestId, "stopped");
    }
    return;
  }
  switch (event.type) {
    case "start":
      message.model = event.model || message.model;
      message.cached = Boolean(event.cached);
      break;
    case "delta":
      message.text += event.text || "";
      scheduleText(pending);
      break;
    case "end":
      message.cached = Boolean(event.cached) || message.cached;
      setBudget(event.remaining);
      finish(event.requestId, "done");
      break;
    case "error":
      setBudget(event.remaining);
      if (event.code === "rate_limited" && event.retryAfterSeconds) rateLimited(event.retryAfterSeconds);
      else notice(humanError(event));
      finish(event.requestId, "error", humanError(event));
      return;
    default:
      return;
  }
  if (pending.node) {
    renderMeta(message, pending.node, pending.metaNode);
    const list = $("messages");
    list.scrollTop = list.scrollHeight;
  }
}

function switchTo(id) {
  state.currentId = id;
  saveConversations();
  renderConversationList();
  renderMessages();
  $("conversation-title").focus();
}

// -- views ---------------------------------------------------------------------------------------------

function showSignIn() {
  state.challenge = null;
  $("chat-view").hidden = true;
  $("account").hidden = true;
  $("sign-in-view").hidden = false;
  $("challenge-form").hidden = true;
  $("sign-in-form").hidden = false;
  $("connection").textContent = "";
  $("username").focus();
}

const CHALLENGE_TITLES = {
  NEW_PASSWORD_REQUIRED: "Choose a new password",
  MFA_SETUP: "Set up two-step sign-in",
  SOFTWARE_TOKEN_MFA: "Two-step sign-in",
};

/** Cognito wants one more step: ask for it in place of the sign-in form. */
async function showChallenge(challenge) {
  state.challenge = challenge;
  $("sign-in-form").hidden = true;
  $("challenge-form").hidden = false;
  $("challenge-error").textContent = "";
  $("challenge-title").textContent = CHALLENGE_TITLES[challenge.name];
  $("new-password-fields").hidden = challenge.name !== "NEW_PASSWORD_REQUIRED";
  $("totp-setup").hidden = challenge.name !== "MFA_SETUP";
  $("code-fields").hidden = challenge.name === "NEW_PASSWORD_REQUIRED";
  for (const id of ["new-password", "new-password-again", "mfa-code"]) $(id).value = "";
  // While setting up, the code field is described by the key it comes from (announced on focus).
  if (challenge.name === "MFA_SETUP") $("mfa-code").setAttribute("aria-describedby", "totp-setup");
  else $("mfa-code").removeAttribute("aria-describedby");
  if (challenge.name === "MFA_SETUP") {
    try {
      const { secret, uri } = await challenge.totpSecret();
      $("totp-secret").textContent = secret.replace(/(.{4})/g, "$1 ").trim();
      $("totp-link").href = uri;
    } catch (err) {
      $("challenge-error").textContent = describe(err);
    }
  }
  $(challenge.name === "NEW_PASSWORD_REQUIRED" ? "new-password" : "mfa-code").focus();
}

async function signedInOr(result) {
  if (result instanceof Challenge) await showChallenge(result);
  else {
    state.session = result;
    state.challenge = null;
    $("password").value = "";
    await showChat();
  }
}

async function showChat() {
  $("sign-in-view").hidden = true;
  $("chat-view").hidden = false;
  $("account").hidden = false;
  $("who").textContent = `Signed in as ${state.session.username}`;
  tierLimits();
  loadConversations();
  if (!current()) newConversation();
  renderConversationList();
  renderMessages();
  state.events = new EventsClient({
    http: state.config.http,
    realtime: state.config.realtime,
    getToken: () => state.session.token(),
  });
  state.events.addEventListener("resubscribed", resumeAll);
  state.events.addEventListener("state", (e) => {
    const labels = { connecting: "Connecting…", open: "Connected", reconnecting: "Reconnecting…", closed: "Disconnected" };
    $("connection").textContent = labels[e.detail] || "";
  });
  state.session.onexpired = () => signOut("Your session expired; sign in again.");
  state.events.connect().then(askUsage, () => {});
  $("prompt").focus();
}

async function signOut(message) {
  if (state.events) state.events.close();
  state.events = null;
  state.subscriptions.clear();
  for (const [id] of state.pending) finish(id, "error", "Signed out.");
  clearNotice();
  if (state.session) await state.session.signOut();
  state.session = null;
  // Nothing of this user stays in the page for the next one: their messages, conversations and budget.
  $("messages").replaceChildren();
  $("conversation-list").replaceChildren();
  $("conversation-title").textContent = "Conversation";
  resetBudget();
  $("sign-in-error").textContent = typeof message === "string" ? message : "";
  showSignIn();
}

// -- wiring --------------------------------------------------------------------------------------------

function wire() {
  $("sign-in-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const username = $("username").value.trim();
    const password = $("password").value;
    const error = $("sign-in-error");
    if (!username || !password) {
      error.textContent = "Enter your username and password.";
      (username ? $("password") : $("username")).focus();
      return;
    }
    error.textContent = "";
    const button = e.submitter || $("sign-in-form").querySelector("button");
    button.disabled = true;
    try {
      await signedInOr(await signIn(state.config, username, password));
    } catch (err) {
      error.textContent = describe(err);
      $("password").focus();
    } finally {
      button.disabled = false;
    }
  });

  $("challenge-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const challenge = state.challenge;
    const error = $("challenge-error");
    if (!challenge) return;
    const answer = {};
    if (challenge.name === "NEW_PASSWORD_REQUIRED") {
      answer.newPassword = $("new-password").value;
      if (!answer.newPassword || answer.newPassword !== $("new-password-again").value) {
        error.textContent = "Type the same new password twice.";
        $("new-password").focus();
        return;
      }
    } else {
      answer.code = $("mfa-code").value.replace(/\s/g, "");
      if (!/^\d{6}$/.test(answer.code)) {
        error.textContent = "Type the 6 digits your authenticator app shows.";
        $("mfa-code").focus();
        return;
      }
    }
    error.textContent = "";
    const button = e.submitter || $("challenge-form").querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await signedInOr(await answerChallenge(challenge, answer));
    } catch (err) {
      if (err.type === "NotAuthorizedException") {
        // Cognito's sign-in sessions last minutes: start over rather than fail forever.
        showSignIn();
        $("sign-in-error").textContent = "That sign-in took too long. Sign in again.";
        return;
      }
      error.textContent = describe(err);
      $(challenge.name === "NEW_PASSWORD_REQUIRED" ? "new-password" : "mfa-code").focus();
    } finally {
      button.disabled = false;
    }
  });

  $("challenge-cancel").addEventListener("click", () => showSignIn());

  $("sign-out").addEventListener("click", () => signOut());
  $("stop").addEventListener("click", stopCurrent);

  $("new-conversation").addEventListener("click", () => {
    const open = current();
    if (!open || open.messages.length > 0) newConversation(); // an empty one is already new
    renderConversationList();
    renderMessages();
    $("prompt").focus();
  });

  $("compose").addEventListener("submit", (e) => {
    e.preventDefault();
    if ($("send").disabled) return;
    const text = $("prompt").value.trim();
    if (!text) return;
    const refusal = tooLong(text);
    if (refusal) {
      notice(`Not sent: ${refusal}.`); // the text stays in the box, to shorten
      return;
    }
    $("prompt").value = "";
    send(text);
    $("prompt").focus();
  });

  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("compose").requestSubmit();
    }
  });
}

async function main() {
  wire();
  try {
    const response = await fetch("config.json", { cache: "no-store" });
    if (!response.ok) throw new Error(String(response.status));
    state.config = await response.json();
  } catch {
    $("sign-in-error").textContent = "Could not load the page configuration (config.json).";
    return;
  }
  state.session = await restore(state.config);
  if (state.session) await showChat();
  else showSignIn();
}

main();
