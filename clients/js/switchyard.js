// Switchyard JavaScript client: one WebSocket to the gateway, rooms, recovery after a
// reconnect, exponential backoff with full jitter, token refresh. No runtime dependencies;
// runs in browsers and in Node (pass a WebSocket constructor, e.g. the `ws` package, on Node 20).
//
// The wire contract it implements is protocol/README.md at the repository root.
//
// Layout:
// - `backoffDelay`, `backoffCap`, `shouldReconnect`, `decodeJwtExp`: pure helpers (exported for tests).
// - `SwitchyardClient`: the connection state machine.
//     connect (user room `since`) → welcome → (re)subscribe every room with `since` → events,
//     deduped by offset within an epoch
//     close   → final code? emit 'close' {final:true} : backoff → token() → connect again

/** Subprotocol the gateway selects; the token rides in a second entry, `bearer.<jwt>`. */
export const SUBPROTOCOL = "switchyard.v1";

/**
 * Upper bound of the delay before reconnect attempt `attempt` (0-based):
 * `min(maxMs, initialMs · 2^attempt)`.
 * @param {number} attempt
 * @param {{initialMs: number, maxMs: number}} opts
 * @returns {number}
 */
export function backoffCap(attempt, { initialMs, maxMs }) {
  // 2^attempt overflows to Infinity for huge attempts; min() keeps it at maxMs.
  return Math.min(maxMs, initialMs * 2 ** Math.max(0, attempt));
}

/**
 * Delay before reconnect attempt `attempt` (0-based), with FULL jitter:
 * uniformly random in `[0, backoffCap(attempt)]`, so a fleet of clients dropped together
 * (a gateway drain) does not come back in lockstep.
 * @param {number} attempt
 * @param {{initialMs: number, maxMs: number}} opts
 * @param {() => number} [random] uniform in [0, 1) (Math.random by default)
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, opts, random = Math.random) {
  return Math.floor(random() * backoffCap(attempt, opts));
}

/**
 * Whether a close code calls for a reconnect (protocol/README.md, "Close codes"):
 * 4000–4499 yes (and recover), 4500–4999 never; of RFC 6455's, 1000 (we asked), 1002, 1003,
 * 1007, 1008, 1009, 1010 (the client must be fixed) never, the rest (1001 going away,
 * 1005/1006 abnormal, 1011 server error, 1012/1013 restart / try later) yes.
 * @param {number} code
 * @returns {boolean}
 */
export function shouldReconnect(code) {
  if (code >= 4500 && code <= 4999) return false;
  if (code >= 4000 && code <= 4499) return true;
  return ![1000, 1002, 1003, 1007, 1008, 1009, 1010].includes(code);
}

/**
 * The `exp` claim (seconds since the Unix epoch) of a JWT, or `undefined` when absent or
 * unreadable. The signature is not checked: the client only needs to know when to refresh.
 * @param {string} token
 * @returns {number | undefined}
 */
export function decodeJwtExp(token) {
  try {
    const part = String(token).split(".")[1];
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const json = new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : undefined;
  } catch {
    return undefined;
  }
}

/** The error a request rejects with: the server's `{code, message}`, or a local one. */
export class SwitchyardError extends Error {
  /**
   * @param {string} code server code (`forbidden`, `bad_request`, …) or `disconnected` / `closed`
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.name = "SwitchyardError";
    this.code = code;
  }
}

/**
 * @typedef {{epoch: string, offset: number}} Position
 * @typedef {{type: "event", room: string, event: string, offset: number, epoch?: string, data: any}} EventFrame
 * @typedef {{room: string, position: Position, recovered: boolean, snapshot?: any}} Subscribed
 *
 * @typedef {object} ClientOptions
 * @property {string} url `ws://host/ws` or `wss://host/ws`
 * @property {string | (() => string | Promise<string>)} token a JWT, or a function returning a
 *   fresh one: called for every connection attempt and `refreshBeforeExpSecs` before `exp`
 * @property {any} [WebSocket] WebSocket constructor (default `globalThis.WebSocket`)
 * @property {{initialMs?: number, maxMs?: number}} [backoff] reconnect backoff (500 ms … 30 s)
 * @property {number} [refreshBeforeExpSecs] refresh this long before `exp` (60)
 * @property {number} [connectTimeoutMs] give up on an attempt without `welcome` after this (10000)
 */

/**
 * A Switchyard connection that stays up: reconnects with backoff, resubscribes its rooms with
 * `since` and recovers what it missed (or tells the app to resync), dedupes by offset.
 *
 * Events (`client.on(name, handler)`):
 * - `welcome` (the welcome frame) after every (re)connection
 * - `event` ({room, event, offset, data}) every applied event, after the room's own handler
 * - `recovered` ({room, position}) a resubscribe recovered completely; the missed events follow
 * - `resync` ({room, snapshot, position}) recovery impossible: replace the room's state with
 *   `snapshot` (or refetch over REST; `snapshot` is `null` for `user:` rooms)
 * - `gap` ({room}) the server may have lost events; the client resubscribes with `since` itself
 * - `revoked` ({room, reason}) the server ended this room's subscription (not rejoined)
 * - `refreshed` ({exp}) the server accepted a fresh token
 * - `error` ({room?, code, message}) a background request failed (a resubscribe, a refresh)
 * - `reconnecting` ({attempt, delayMs, code, reason}) a reconnect is scheduled
 * - `close` ({code, reason, final}) the socket closed; `final: true` means no reconnect
 * - `message` ({orderId, room, offset, ...data}) a `chat.message` in a joined order room
 * - `typing` ({orderId, room, from, role}) someone else is typing in a joined order room
 * - `read` ({orderId, room, from, message_id}) a member's read marker moved
 */
/** Chat events of an order room, and the client event each is also emitted as. */
const CHAT_EVENTS = { "chat.message": "message", "chat.typing": "typing", "chat.read": "read" };

/** A fresh `client_msg_id`: a UUID where the platform has one. */
function newClientMsgId() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;
}

export class SwitchyardClient {
  /** @param {ClientOptions} options */
  constructor(options) {
    const { url, token } = options ?? {};
    if (!url) throw new TypeError("SwitchyardClient: url is required");
    if (typeof token !== "string" && typeof token !== "function") {
      throw new TypeError("SwitchyardClient: token must be a string or a function");
    }
    this.url = url;
    this.token = token;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== "function") {
      throw new TypeError("SwitchyardClient: no WebSocket constructor (pass options.WebSocket)");
    }
    this.backoff = { initialMs: 500, maxMs: 30_000, ...options.backoff };
    this.refreshBeforeExpSecs = options.refreshBeforeExpSecs ?? 60;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10_000;

    /** The current socket (exposed for tests: `_socket.terminate()` simulates a network drop). */
    this._socket = null;
    /** @type {Map<string, Set<Function>>} */
    this._handlers = new Map();
    /**
     * Rooms this client wants, with the last applied position. Kept across reconnects.
     * @type {Map<string, {onEvent?: Function, position: Position | null, inflight: boolean, again: boolean, waiters: {resolve: Function, reject: Function}[], userRoom: boolean}>}
     */
    this._rooms = new Map();
    /** Requests waiting for their reply, by id. */
    this._pending = new Map();
    this._nextId = 1;
    this._attempt = 0;
    this._welcome = null;
    this._closed = false;
    this._currentToken = typeof token === "string" ? token : null;
    this._timers = { reconnect: null, refresh: null, connect: null };
    this._connectWaiters = [];
  }

  /**
   * Registers an event handler; returns a function that removes it.
   * @param {string} name
   * @param {(payload: any) => void} handler
   * @returns {() => void}
   */
  on(name, handler) {
    if (!this._handlers.has(name)) this._handlers.set(name, new Set());
    this._handlers.get(name).add(handler);
    return () => this._handlers.get(name)?.delete(handler);
  }

  /** Whether a welcome was received on the current socket. */
  get connected() {
    return this._welcome !== null;
  }

  /**
   * Opens the connection (retrying with backoff) and resolves with the first `welcome`.
   * Rejects only if the client is closed, or the server closes with a final code, first.
   * @returns {Promise<object>}
   */
  connect() {
    if (this._welcome) return Promise.resolve(this._welcome);
    const p = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    this._closed = false;
    this._finished = false;
    // Unless an attempt is already under way (opening, open, or a reconnect scheduled).
    if (!this._socket && !this._timers.reconnect && !this._opening) this._open();
    return p;
  }

  /**
   * Joins a room (or, for a room already joined, reads its position and snapshot again).
   * Kept across reconnects: the client resubscribes with `since` and recovers. Called while
   * disconnected, it resolves once the room is joined after the next connection; after a
   * final close (or `close()`), it rejects with `closed` until `connect()` is called again.
   * @param {string} room `order:42`, `user:c1`, `admin:revenue`
   * @param {(event: EventFrame) => void} [onEvent] called for each applied event of the room
   * @param {{since?: Position}} [opts] a position the app persisted, to recover from
   * @returns {Promise<Subscribed>} rejects with a SwitchyardError (`forbidden`, `bad_request`, …)
   */
  subscribe(room, onEvent, opts = {}) {
    if (this._finished) {
      return Promise.reject(new SwitchyardError("closed", "the client is closed; connect() again"));
    }
    let entry = this._rooms.get(room);
    if (!entry) {
      entry = { position: null, inflight: false, again: false, waiters: [], userRoom: false };
      this._rooms.set(room, entry);
    }
    if (onEvent) entry.onEvent = onEvent;
    if (opts.since) entry.position = { ...opts.since };
    const p = new Promise((resolve, reject) => entry.waiters.push({ resolve, reject }));
    // A subscribe already in flight answers this call too.
    if (this._welcome && !entry.inflight) this._sendSubscribe(room, entry);
    return p;
  }

  /**
   * Leaves a room; its events are ignored from now on.
   * @param {string} room
   * @returns {Promise<void>} rejects with the server's error (e.g. `bad_request`)
   */
  async unsubscribe(room) {
    const entry = this._rooms.get(room);
    this._rooms.delete(room);
    entry?.waiters.forEach((w) => w.reject(new SwitchyardError("unsubscribed", `left ${room}`)));
    if (!this._welcome) return; // not joined on any socket
    try {
      await this._request({ op: "unsubscribe", room });
    } catch (err) {
      if (err.code !== "disconnected") throw err; // the connection is gone: the room is left
    }
  }

  /**
   * The last applied position of a room (persist it to recover after an app restart).
   * @param {string} room
   * @returns {Position | null}
   */
  position(room) {
    const p = this._rooms.get(room)?.position;
    return p ? { ...p } : null;
  }

  /**
   * Round trip to the server.
   * @returns {Promise<void>}
   */
  async ping() {
    await this._request({ op: "ping" });
  }

  /**
   * Sends a chat message to an order's room and resolves with the message as stored. It is
   * sent again with the same `client_msg_id` until the server acknowledges it — after a
   * dropped connection, on the next one — so a reply lost with a connection never stores the
   * message twice. Rejects on a refusal (`forbidden`, `bad_request`) or once the
   * client is closed.
   * @param {string} orderId
   * @param {string} text
   * @param {{clientMsgId?: string}} [opts] an id the app chose (e.g. to resend after a restart)
   * @returns {Promise<object>} `{message_id, order_id, from, role, text, client_msg_id, sent_at, offset}`
   */
  async sendMessage(orderId, text, opts = {}) {
    const room = `order:${orderId}`;
    const clientMsgId = opts.clientMsgId ?? newClientMsgId();
    for (let attempt = 0; ; attempt += 1) {
      if (this._finished) throw new SwitchyardError("closed", "the client is closed");
      try {
        if (!this._welcome) await this.connect();
        const reply = await this._request({ op: "send", room, text, client_msg_id: clientMsgId });
        return reply.message;
      } catch (err) {
        // Not known to be stored: the same id again (the server answers the first message).
        if (err.code === "disconnected" || err.code === "internal" || err.code === "unavailable") continue;
        if (err.code === "rate_limited") {
          await new Promise((r) => setTimeout(r, backoffDelay(attempt, this.backoff)));
          continue;
        }
        throw err;
      }
    }
  }

  /**
   * Tells the order room's members this user is typing (the server forwards at most one every
   * 2 s). Needs the room joined (`subscribe`).
   * @param {string} orderId
   * @returns {Promise<void>}
   */
  async typing(orderId) {
    await this._request({ op: "typing", room: `order:${orderId}` });
  }

  /**
   * Marks the order's chat read up to `messageId` (stored; it never moves back).
   * @param {string} orderId
   * @param {string} messageId
   * @returns {Promise<void>}
   */
  async markRead(orderId, messageId) {
    await this._request({ op: "read", room: `order:${orderId}`, message_id: String(messageId) });
  }

  /**
   * Closes for good (code 1000): no reconnect; pending requests reject with `closed`.
   */
  close() {
    this._closed = true;
    this._clearTimers();
    const socket = this._socket;
    this._socket = null;
    this._welcome = null;
    for (const entry of this._rooms.values()) entry.inflight = false;
    if (socket && socket.readyState <= 1) {
      try {
        socket.close(1000, "client closed");
      } catch {
        /* CONNECTING sockets may throw in some implementations */
      }
    }
    this._finish(1000, "client closed");
  }

  // ---- internals ---------------------------------------------------------------------------

  _emit(name, payload) {
    for (const h of this._handlers.get(name) ?? []) {
      try {
        h(payload);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        }); // an app handler's bug must not break the client's state machine
      }
    }
  }

  _clearTimers() {
    for (const k of Object.keys(this._timers)) {
      clearTimeout(this._timers[k]);
      this._timers[k] = null;
    }
  }

  async _open() {
    this._timers.reconnect = null;
    this._opening = true;
    let token;
    try {
      token = typeof this.token === "function" ? await this.token() : this.token;
    } catch (err) {
      this._opening = false;
      if (this._closed) return;
      this._emit("error", { code: "token", message: `token provider failed: ${err?.message ?? err}` });
      this._scheduleReconnect(1006, "token provider failed");
      return;
    }
    this._opening = false;
    if (this._closed) return;
    this._currentToken = token;

    let socket;
    try {
      socket = new this.WebSocket(this._connectUrl(), [SUBPROTOCOL, `bearer.${token}`]);
    } catch (err) {
      this._emit("error", { code: "connect", message: String(err?.message ?? err) });
      this._scheduleReconnect(1006, "connect failed");
      return;
    }
    this._socket = socket;
    this._timers.connect = setTimeout(() => {
      if (this._socket === socket && !this._welcome) {
        try {
          socket.close();
        } catch {
          /* ignored */
        }
      }
    }, this.connectTimeoutMs);
    let closed = false;
    const onClose = (code, reason) => {
      if (closed) return;
      closed = true;
      this._onClose(socket, code, reason);
    };
    socket.addEventListener("message", (ev) => {
      if (this._socket === socket) this._onMessage(ev.data);
    });
    socket.addEventListener("close", (ev) => onClose(ev.code ?? 1006, ev.reason ?? ""));
    // An error is always followed by a close; listening keeps Node's `ws` from throwing.
    socket.addEventListener("error", () => {});
  }

  /**
   * The URL of the next connection: with `since` for the user room once its position is known,
   * so the server recovers it in the welcome (protocol/README.md, "Positions and recovery").
   */
  _connectUrl() {
    for (const entry of this._rooms.values()) {
      if (entry.userRoom && entry.position) {
        const since = encodeURIComponent(`${entry.position.epoch}:${entry.position.offset}`);
        return `${this.url}${this.url.includes("?") ? "&" : "?"}since=${since}`;
      }
    }
    return this.url;
  }

  _onMessage(data) {
    if (typeof data !== "string") return; // the server only sends text frames
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    switch (msg.type) {
      case "welcome":
        return this._onWelcome(msg);
      case "event":
        return this._onEvent(msg);
      case "ok":
      case "error":
        return this._onReply(msg);
      case "gap":
        this._emit("gap", { room: msg.room });
        return this._resubscribe(msg.room);
      case "revoked": {
        const entry = this._rooms.get(msg.room);
        this._rooms.delete(msg.room);
        entry?.waiters.forEach((w) => w.reject(new SwitchyardError("revoked", msg.reason)));
        this._emit("revoked", { room: msg.room, reason: msg.reason });
        return;
      }
    }
  }

  _onWelcome(msg) {
    clearTimeout(this._timers.connect);
    this._welcome = msg;
    this._attempt = 0; // a successful welcome resets the backoff
    for (const room of msg.rooms ?? []) {
      const now = msg.positions?.[room];
      let entry = this._rooms.get(room);
      if (!entry) {
        entry = { position: null, inflight: false, again: false, waiters: [], userRoom: true };
        this._rooms.set(room, entry);
      }
      entry.userRoom = true;
      const last = entry.position;
      if (now && last && msg.recovered === true) {
        // Recovered in the welcome: the missed events follow it and advance the position.
        entry.waiters.splice(0).forEach((w) => w.resolve({ room, position: { ...now }, recovered: true }));
        this._emit("recovered", { room, position: { ...now } });
      } else if (now && last && msg.recovered === false) {
        entry.position = { ...now };
        entry.waiters.splice(0).forEach((w) => w.resolve({ room, position: { ...now }, recovered: false, snapshot: null }));
        this._emit("resync", { room, snapshot: null, position: { ...now } });
      } else if (now && (!last || (last.epoch === now.epoch && last.offset === now.offset))) {
        // First connection, or nothing was published while we were away.
        entry.position = { ...now };
        entry.waiters.splice(0).forEach((w) => w.resolve({ room, position: { ...now }, recovered: false, snapshot: null }));
      } else {
        this._sendSubscribe(room, entry); // recover what we missed (or resync)
      }
    }
    for (const [room, entry] of this._rooms) {
      if (!(msg.rooms ?? []).includes(room)) this._sendSubscribe(room, entry);
    }
    this._scheduleRefresh();
    this._emit("welcome", msg);
    this._connectWaiters.splice(0).forEach((w) => w.resolve(msg));
  }

  _onEvent(msg) {
    const entry = this._rooms.get(msg.room);
    // Not ours, or not joined yet (the subscribe reply's snapshot or recovery covers it). Events
    // that arrive while a *re*subscribe is in flight were written before the server read it:
    // the server never sends them again, so they are applied.
    if (!entry || !entry.position) return;
    if (msg.epoch !== undefined && msg.epoch !== entry.position.epoch) {
      // The room's offsets started again in a new epoch (its history was lost on the server).
      entry.position = { epoch: msg.epoch, offset: msg.offset };
    } else {
      if (msg.offset <= entry.position.offset) return; // already applied (defence in depth)
      entry.position = { epoch: entry.position.epoch, offset: msg.offset };
    }
    const event = { room: msg.room, event: msg.event, offset: msg.offset, data: msg.data };
    if (entry.held) entry.held.push(event);
    else this._deliver(entry, event);
  }

  _deliver(entry, event) {
    if (entry.onEvent) {
      try {
        entry.onEvent(event);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
    this._emit("event", event);
    const chat = CHAT_EVENTS[event.event];
    if (chat && event.room.startsWith("order:")) {
      const orderId = event.room.slice("order:".length);
      this._emit(chat, { orderId, room: event.room, offset: event.offset, ...event.data });
    }
  }

  /** Subscribes again with `since` (gap, transient failure); never two at once per room. */
  _resubscribe(room) {
    const entry = this._rooms.get(room);
    if (!entry || !this._welcome) return;
    if (entry.inflight) entry.again = true;
    else this._sendSubscribe(room, entry);
  }

  _sendSubscribe(room, entry) {
    const since = entry.position;
    entry.inflight = true;
    const op = { op: "subscribe", room };
    if (since) op.since = since;
    this._send(
      op,
      (reply) => {
        if (this._rooms.get(room) !== entry) return; // unsubscribed meanwhile
        entry.inflight = false;
        entry.retries = 0;
        const position = reply.position;
        let result;
        if (since && reply.recovered === true) {
          // The missed events follow the reply; they advance the position from `since` (or from
          // where events that came before the reply left it).
          if (entry.position?.epoch !== position.epoch) entry.position = { epoch: position.epoch, offset: since.offset };
          this._emit("recovered", { room, position: { ...position } });
          result = { room, position, recovered: true };
        } else {
          entry.position = position ? { ...position } : null;
          if (since) this._emit("resync", { room, snapshot: reply.snapshot ?? null, position });
          result = { room, position, recovered: false, snapshot: reply.snapshot ?? null };
        }
        if (entry.waiters.length) {
          // Let the app's `await subscribe()` continuation (microtasks) apply the snapshot
          // before the room's next events reach it: hold them until a macrotask later.
          entry.held = [];
          setTimeout(() => {
            const held = entry.held ?? [];
            entry.held = null;
            if (this._rooms.get(room) === entry) held.forEach((e) => this._deliver(entry, e));
          }, 0);
        }
        entry.waiters.splice(0).forEach((w) => w.resolve(result));
        if (entry.again) {
          entry.again = false;
          this._sendSubscribe(room, entry);
        }
      },
      (err) => {
        if (this._rooms.get(room) !== entry) return;
        entry.inflight = false;
        if (err.code === "disconnected") return; // resent after the next welcome
        if (!entry.waiters.length && (err.code === "internal" || err.code === "rate_limited")) {
          // A background resubscribe (reconnect, gap) hit a transient refusal: try again later.
          entry.retries = (entry.retries ?? 0) + 1;
          setTimeout(() => this._resubscribe(room), backoffDelay(entry.retries, this.backoff));
          return;
        }
        this._rooms.delete(room);
        if (entry.waiters.length) entry.waiters.splice(0).forEach((w) => w.reject(err));
        else this._emit("error", { room, code: err.code, message: err.message });
      },
    );
  }

  /** Sends an op and returns a promise of its `ok` reply (rejects with the error). */
  _request(op) {
    return new Promise((resolve, reject) => this._send(op, resolve, reject));
  }

  /**
   * Sends an op; `onOk` / `onErr` run synchronously when the reply is read, before any frame
   * that follows it (a promise's `then` would run after the rest of the same network read:
   * the recovered events that follow a subscribe reply would then be dropped as in flight).
   */
  _send(op, onOk, onErr) {
    const socket = this._socket;
    if (!this._welcome || !socket || socket.readyState !== 1) {
      onErr(new SwitchyardError("disconnected", "not connected"));
      return;
    }
    const id = this._nextId++;
    this._pending.set(id, { resolve: onOk, reject: onErr });
    try {
      socket.send(JSON.stringify({ ...op, id }));
    } catch (err) {
      this._pending.delete(id);
      onErr(new SwitchyardError("disconnected", String(err?.message ?? err)));
    }
  }

  _onReply(msg) {
    // The error code is `error` (the one error shape); older servers sent it as `code` only.
    const code = msg.error ?? msg.code;
    const pending = this._pending.get(msg.id);
    if (!pending) {
      if (msg.type === "error") this._emit("error", { code, message: msg.message });
      return;
    }
    this._pending.delete(msg.id);
    if (msg.type === "ok") pending.resolve(msg);
    else pending.reject(new SwitchyardError(code, msg.message));
  }

  _scheduleRefresh() {
    clearTimeout(this._timers.refresh);
    this._timers.refresh = null;
    if (typeof this.token !== "function") return;
    const exp = decodeJwtExp(this._currentToken);
    if (exp === undefined) return;
    // At least 1 s, so a token already inside the window does not spin.
    const inMs = Math.max(1000, (exp - this.refreshBeforeExpSecs) * 1000 - Date.now());
    this._timers.refresh = setTimeout(() => this._refresh(), inMs);
  }

  async _refresh() {
    this._timers.refresh = null;
    const socket = this._socket;
    try {
      const token = await this.token();
      if (this._socket !== socket || !this._welcome) return; // reconnected meanwhile
      await this._request({ op: "refresh", token });
      this._currentToken = token;
      this._emit("refreshed", { exp: decodeJwtExp(token) });
    } catch (err) {
      if (this._socket !== socket) return;
      // The server closes with 4001 at `exp`; the reconnect then asks for a fresh token.
      this._emit("error", { code: err?.code ?? "token", message: String(err?.message ?? err) });
    }
    if (this._socket === socket && this._welcome) this._scheduleRefresh();
  }

  _onClose(socket, code, reason) {
    if (this._socket !== socket) return;
    this._socket = null;
    this._welcome = null;
    clearTimeout(this._timers.connect);
    clearTimeout(this._timers.refresh);
    for (const p of this._pending.values()) p.reject(new SwitchyardError("disconnected", "connection closed"));
    this._pending.clear();
    for (const entry of this._rooms.values()) entry.inflight = false;
    if (this._closed) return;
    // A static token that has expired cannot get us back in: stop instead of looping on 401.
    const exp = typeof this.token === "string" ? decodeJwtExp(this.token) : undefined;
    const expired = exp !== undefined && exp * 1000 <= Date.now();
    if (!shouldReconnect(code) || expired) {
      this._closed = true;
      this._clearTimers();
      this._finish(code, expired && shouldReconnect(code) ? "token expired" : reason);
      return;
    }
    this._emit("close", { code, reason, final: false });
    this._scheduleReconnect(code, reason);
  }

  _scheduleReconnect(code, reason) {
    if (this._closed) return;
    const delayMs = backoffDelay(this._attempt, this.backoff);
    this._attempt += 1;
    this._emit("reconnecting", { attempt: this._attempt, delayMs, code, reason });
    this._timers.reconnect = setTimeout(() => this._open(), delayMs);
  }

  /** Final close: settle everything that waits, tell the app once. */
  _finish(code, reason) {
    if (this._finished) return;
    this._finished = true;
    const err = new SwitchyardError("closed", `connection closed (${code}${reason ? `: ${reason}` : ""})`);
    for (const p of this._pending.values()) p.reject(err);
    this._pending.clear();
    for (const entry of this._rooms.values()) entry.waiters.splice(0).forEach((w) => w.reject(err));
    this._connectWaiters.splice(0).forEach((w) => w.reject(err));
    this._emit("close", { code, reason, final: true });
  }
}
