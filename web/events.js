// A small AppSync Events WebSocket client (the protocol AWS's clients speak, also served by `aigw dev`):
// header subprotocol auth, connection_init/ack, subscribe/unsubscribe, publish, keep-alive (`ka`) watchdog,
// and reconnect with exponential backoff that re-subscribes what was subscribed.

export const SUBPROTOCOL = "aws-appsync-event-ws";
const OPERATION_TIMEOUT_MS = 30_000;
const BACKOFF_MIN_MS = 1_000;
const BACKOFF_MAX_MS = 30_000;

export class EventsError extends Error {
  constructor(frame) {
    const errors = (frame && frame.errors) || [{}];
    super(`${frame && frame.type}: ${errors[0].errorType || ""} ${errors[0].message || ""}`.trim());
    this.name = "EventsError";
    this.frame = frame;
    this.errorType = errors[0].errorType;
  }
}

function base64url(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function newId() {
  return globalThis.crypto && crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`.replace(".", "");
}

/**
 * `new EventsClient({http, realtime, getToken})`; `getToken()` returns (a promise of) the current
 * authorization token. Dispatches `state` events (detail: "connecting" | "open" | "reconnecting" | "closed").
 */
export class EventsClient extends EventTarget {
  constructor({ http, realtime, getToken }) {
    super();
    this.host = new URL(http).host;
    this.realtime = realtime;
    this.getToken = getToken;
    this.state = "closed";
    this._ws = null;
    this._pending = new Map(); // id -> {resolve, reject, timer}
    this._subs = new Map(); // id -> {channel, onEvent}
    this._ready = null; // promise of an acknowledged connection
    this._kaTimer = null;
    this._kaTimeoutMs = 300_000;
    this._retryTimer = null;
    this._attempt = 0;
    this._closing = false;
    this._everOpen = false; // a later open is a reconnect
  }

  _setState(state) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }

  async _auth() {
    return { host: this.host, Authorization: await this.getToken() };
  }

  /** Resolves once the connection is acknowledged (connecting if needed). */
  connect() {
    this._closing = false;
    if (this._ready) return this._ready;
    this._ready = this._open().catch((err) => {
      this._ready = null;
      throw err;
    });
    return this._ready;
  }

  async _open() {
    this._setState(this._attempt ? "reconnecting" : "connecting");
    const header = base64url(JSON.stringify(await this._auth()));
    return new Promise((resolve, reject) => {
      let acked = false;
      const ws = new WebSocket(this.realtime, [SUBPROTOCOL, `header-${header}`]);
      this._ws = ws;
      ws.onopen = () => ws.send(JSON.stringify({ type: "connection_init" }));
      ws.onmessage = (message) => {
        let frame;
        try {
          frame = JSON.parse(message.data);
        } catch {
          return;
        }
        if (!acked) {
          if (frame.type === "connection_ack") {
            acked = true;
            this._attempt = 0;
            this._kaTimeoutMs = frame.connectionTimeoutMs || this._kaTimeoutMs;
            this._armWatchdog();
            this._setState("open");
            resolve();
            this._resubscribe();
          } else if (frame.type === "connection_error" || frame.type === "error") {
            reject(new EventsError(frame));
            ws.close();
          } else if (frame.type === "ka") {
            this._armWatchdog();
          }
          return;
        }
        this._onFrame(frame);
      };
      ws.onclose = () => {
        if (this._ws !== ws) return;
        this._ws = null;
        this._ready = null;
        clearTimeout(this._kaTimer);
        this._failPending(new Error("connection closed"));
        if (!acked) reject(new Error("could not connect to the events endpoint"));
        if (this._closing) {
          this._setState("closed");
        } else {
          this._scheduleReconnect();
        }
      };
    });
  }

  _armWatchdog() {
    clearTimeout(this._kaTimer);
    // No `ka` (or any frame) within connectionTimeoutMs: the connection is dead even if the socket says not.
    this._kaTimer = setTimeout(() => {
      if (this._ws) this._ws.close(4000, "keep-alive timeout");
    }, this._kaTimeoutMs);
  }

  _scheduleReconnect() {
    clearTimeout(this._retryTimer);
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this._attempt);
    const delay = base / 2 + Math.random() * (base / 2); // jitter
    this._attempt += 1;
    this._setState("reconnecting");
    this._retryTimer = setTimeout(() => {
      this.connect().catch(() => {
        if (!this._closing && !this._ws) this._scheduleReconnect();
      });
    }, delay);
  }

  _failPending(err) {
    for (const [, op] of this._pending) {
      clearTimeout(op.timer);
      op.reject(err);
    }
    this._pending.clear();
  }

  _onFrame(frame) {
    this._armWatchdog();
    if (frame.type === "ka") return;
    if (frame.type === "data") {
      const sub = this._subs.get(frame.id);
      if (!sub) return;
      let event;
      try {
        event = typeof frame.event === "string" ? JSON.parse(frame.event) : frame.event;
      } catch {
        return;
      }
      sub.onEvent(event);
      return;
    }
    const op = frame.id && this._pending.get(frame.id);
    if (op) {
      this._pending.delete(frame.id);
      clearTimeout(op.timer);
      if (frame.type.endsWith("_error") || frame.type === "error") op.reject(new EventsError(frame));
      else op.resolve(frame);
    }
  }

  async _call(message) {
    await this.connect();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(message.id);
        reject(new Error(`${message.type} timed out`));
      }, OPERATION_TIMEOUT_MS);
      this._pending.set(message.id, { resolve, reject, timer });
      this._ws.send(JSON.stringify(message));
    });
  }

  async _sendSubscribe(id, channel) {
    return this._call({ type: "subscribe", id, channel, authorization: await this._auth() });
  }

  /** After a reconnect: subscribe again, then dispatch `resubscribed` (the page resumes its answers from there:
   * what is published between the two would otherwise reach no one). */
  async _resubscribe() {
    const renewed = [];
    for (const [id, sub] of this._subs) {
      if (!sub.active) continue;
      renewed.push(this._sendSubscribe(id, sub.channel).catch((err) => sub.onError && sub.onError(err)));
    }
    const reconnected = this._everOpen;
    this._everOpen = true;
    await Promise.all(renewed);
    if (reconnected) this.dispatchEvent(new CustomEvent("resubscribed"));
  }

  /** Subscribe `onEvent(event)` to a channel; resolves to `{id, unsubscribe()}` once the server agrees. */
  async subscribe(channel, onEvent, onError) {
    const id = newId();
    const sub = { channel, onEvent, onError, active: false };
    this._subs.set(id, sub);
    try {
      await this._sendSubscribe(id, channel);
    } catch (err) {
      this._subs.delete(id);
      throw err;
    }
    sub.active = true;
    return { id, unsubscribe: () => this.unsubscribe(id) };
  }

  async unsubscribe(id) {
    if (!this._subs.delete(id) || !this._ws) return;
    try {
      await this._call({ type: "unsubscribe", id });
    } catch {
      // Gone either way.
    }
  }

  /** Publish events (each JSON-encoded, as the protocol wants); resolves to the publish_success frame. */
  async publish(channel, events) {
    return this._call({
      type: "publish",
      id: newId(),
      channel,
      events: events.map((e) => JSON.stringify(e)),
      authorization: await this._auth(),
    });
  }

  close() {
    this._closing = true;
    clearTimeout(this._retryTimer);
    clearTimeout(this._kaTimer);
    this._subs.clear();
    if (this._ws) this._ws.close(1000, "bye");
    else this._setState("closed");
  }
}
