/**
 * livedesk-client.js — a dependency-free client for the livedesk HTTP API
 * (contract §5) and WebSocket protocol (contract §6).
 *
 * It works in any modern browser as a plain ES module (no build step). It only
 * needs `fetch`, `WebSocket` and `URL`, so it also runs in Node >= 22 or Deno
 * when you pass an absolute `baseUrl`.
 *
 * HTTP: every method returns a Promise of the decoded JSON answer and throws an
 * {@link ApiError} (with `.status`, `.code`, `.body`) on any non-2xx answer.
 *
 * WebSocket: `connect()` opens `/ws?access_token=…` on the same origin as
 * `baseUrl`, answers the server's `hello` by starting a `ping` heartbeat every
 * `heartbeat_ms`, and on any loss reconnects with exponential backoff. After a
 * reconnect every subscribed ticket is re-subscribed with `since` = the last
 * version this client applied, so nothing is missed; events whose version is
 * not newer than the applied one are dropped, so nothing doubles; and if a gap
 * is ever seen the ticket is re-subscribed with `since` (and caught up over
 * HTTP as a safety net), with exponential backoff and jitter between attempts;
 * a gap that does not close after a few attempts (a version that will never
 * come) is left behind with a fresh snapshot, so a permanent gap can never
 * cause a storm of re-subscribes. A `reset` frame (the database went back in
 * time) drops the ticket's state (`onReset`) and re-subscribes without
 * `since` (a snapshot follows). Close code 1013 ("too slow") reconnects at
 * once; close code 4001 (agent disabled or token replaced) never reconnects
 * and emits `unauthorized` with `{code: 4001}`.
 *
 * Events emitted (subscribe with `client.on(name, fn)`, which returns an
 * unsubscribe function):
 *   - `state`        (state: 'connecting'|'live'|'reconnecting'|'offline')
 *   - `hello`        (helloFrame)      — each time a connection becomes live
 *   - `unauthorized` (reason, info)    — token refused: HTTP 401 (info.code 401) or
 *                                        close 4001 (info.code 4001); no reconnect after 4001
 *   - `server-error` (errorFrame)      — a frame was refused ({code, message})
 *   - `fields`       (fieldDefinitions) — custom field definitions changed (a `fields` frame)
 *   - `frame`        (anyFrame)        — every server frame, for debugging
 *
 * @example
 * import { LivedeskClient, ApiError } from './livedesk-client.js';
 *
 * const client = new LivedeskClient({ token: sessionStorage.getItem('token') });
 * const me = await client.me();
 * client.on('state', (s) => console.log('connection:', s));
 * client.connect();
 *
 * const { ticket, messages } = await client.getTicket(42);
 * client.subscribe(42, {
 *   onSnapshot: ({ ticket, messages }) => render(ticket, messages),
 *   onEvent: (ev) => apply(ev),              // in version order, exactly once
 *   onPresence: (viewers) => showAvatars(viewers),
 * }, { since: ticket.version });             // we already have this version
 * client.setPresence(42, 'typing');
 *
 * try {
 *   await client.patchTicket(42, { status: { from: 'new', to: 'open' } });
 * } catch (e) {
 *   if (e instanceof ApiError && e.code === 'field_conflict') {
 *     console.log(e.body.error.fields); // { status: { expected, current } }
 *   }
 * }
 */

/** An HTTP answer that was not 2xx. */
export class ApiError extends Error {
  /**
   * @param {number} status HTTP status (0 for a network failure)
   * @param {any} body the decoded JSON answer (`{error: {code, message, ...}}`) or null
   */
  constructor(status, body) {
    const err = body && typeof body === 'object' ? body.error : null;
    super((err && err.message) || `HTTP ${status}`);
    this.name = 'ApiError';
    /** HTTP status code; 0 when the request never got an answer. */
    this.status = status;
    /** The machine-readable `error.code` (e.g. `field_conflict`), or `http_<status>`. */
    this.code = (err && err.code) || (status === 0 ? 'network_error' : `http_${status}`);
    /** The whole decoded answer; details (e.g. `fields`, `assignee`, `replies`) live in `body.error`. */
    this.body = body;
  }
  /** The `error` object of the answer (details included), or `{}`. */
  get details() {
    return (this.body && this.body.error) || {};
  }
}

/** Connection states, in the order a healthy connection goes through them. */
export const ConnectionState = Object.freeze({
  CONNECTING: 'connecting',
  LIVE: 'live',
  RECONNECTING: 'reconnecting',
  OFFLINE: 'offline',
});

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30000;
const DEFAULT_HEARTBEAT_MS = 15000;
const EVENTS_PAGE = 500;
/** Re-subscribes after a gap: exponential backoff with jitter, capped. */
const GAP_BACKOFF_MIN_MS = 250;
const GAP_BACKOFF_MAX_MS = 30000;
/** After this many re-subscribes with `since` that did not get past the same version: take a fresh snapshot. */
const GAP_ATTEMPTS_BEFORE_SNAPSHOT = 3;
/**
 * Subscribes sent and not answered yet (`subscribed` or an `error` naming the
 * ticket), at most: a client following hundreds of tickets re-subscribes them
 * a few at a time after a reconnect, within the server's subscribe budgets
 * (docs/protocol.md, "Budgets"), rather than all at once and losing those
 * past the budget.
 */
const SUBSCRIBE_WINDOW = 8;
/** After a subscribe refused `rate_limited` or `unavailable`, the queue waits this long, doubling while refusals go on. */
const REFUSED_PAUSE_MIN_MS = 1000;
const REFUSED_PAUSE_MAX_MS = 30000;
/** A subscribe unanswered this long (an answer lost to an older server's unnamed refusal) is sent again. */
const SUBSCRIBE_ANSWER_MS = 20000;
/** Subscribe refusals that end the attempt (the others are retried: `rate_limited`, `unavailable`). */
const FINAL_REFUSALS = new Set(['not_found', 'invalid_field', 'too_many_subscriptions', 'forbidden', 'invalid_frame']);

export class LivedeskClient {
  /**
   * @param {object} options
   * @param {string} [options.baseUrl] origin (and optional path prefix) of the server;
   *   default: the page's origin
   * @param {string} options.token the agent's bearer token
   * @param {typeof WebSocket} [options.WebSocket] WebSocket implementation (default: global)
   */
  constructor({ baseUrl, token, WebSocket: WS } = {}) {
    const fallback = typeof location !== 'undefined' ? location.origin : undefined;
    this.baseUrl = String(baseUrl || fallback || '').replace(/\/+$/, '');
    this.token = token;
    this._WS = WS || globalThis.WebSocket;

    this._listeners = new Map();
    /** @type {Map<number, {handlers: object, version: number|null, presence: string, resyncing: boolean}>} */
    this._subs = new Map();
    this._inboxHandlers = new Set();
    /** Tickets whose subscribe waits to be sent (in order), and those sent but not answered yet. */
    this._subscribeQueue = new Set();
    /** @type {Map<number, number>} ticket → when its subscribe was sent */
    this._subscribesInFlight = new Map();
    this._queuePausedUntil = 0;
    this._queuePauseMs = 0;
    this._queueTimer = null;

    this._ws = null;
    this._state = ConnectionState.OFFLINE;
    this._wanted = false; // connect() called and not disconnect()ed
    this._attempt = 0;
    this._retryTimer = null;
    this._pingTimer = null;
    this._lastFrameAt = 0;
    this._heartbeatMs = DEFAULT_HEARTBEAT_MS;
    this.agent = null; // from `hello`

    this._onOnline = () => {
      if (this._wanted && !this._ws) this._openNow();
    };
    this._onOffline = () => {
      if (this._wanted && this._state !== ConnectionState.LIVE) this._setState(ConnectionState.OFFLINE);
    };
  }

  // ------------------------------------------------------------ events

  /**
   * Listen to a client event (`state`, `hello`, `unauthorized`, `server-error`, `frame`).
   * @returns {() => void} a function that removes the listener
   */
  on(name, fn) {
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(fn);
    return () => this._listeners.get(name)?.delete(fn);
  }

  _emit(name, ...args) {
    for (const fn of [...(this._listeners.get(name) || [])]) {
      try {
        fn(...args);
      } catch (e) {
        console.error(`livedesk-client: "${name}" listener failed`, e);
      }
    }
  }

  /** The current connection state: 'connecting' | 'live' | 'reconnecting' | 'offline'. */
  get state() {
    return this._state;
  }

  _setState(s) {
    if (this._state === s) return;
    this._state = s;
    this._emit('state', s);
  }

  // ------------------------------------------------------------ HTTP

  /**
   * Low-level request. Prefer the named methods.
   * @param {string} method
   * @param {string} path e.g. `/api/tickets/42`
   * @param {{query?: object, body?: any, headers?: object, keepalive?: boolean}} [opts]
   */
  async request(method, path, { query, body, headers, keepalive } = {}) {
    let url = this.baseUrl + path;
    if (query) {
      const qs = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) {
        if (v !== undefined && v !== null && v !== '') qs.set(k, String(v));
      }
      const s = qs.toString();
      if (s) url += '?' + s;
    }
    const init = {
      method,
      headers: { Accept: 'application/json', ...(headers || {}) },
    };
    if (keepalive) init.keepalive = true; // finishes even if the page is being closed
    if (this.token) init.headers.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(url, init);
    } catch (e) {
      throw new ApiError(0, { error: { code: 'network_error', message: `Network error: ${e.message}` } });
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = { error: { code: `http_${res.status}`, message: text.slice(0, 200) } };
      }
    }
    if (!res.ok) {
      const err = new ApiError(res.status, data);
      if (res.status === 401) this._emit('unauthorized', err.message, { code: 401 });
      throw err;
    }
    return data;
  }

  /**
   * POST /api/login — spend a one-time login link's code (`…/#login=<code>`,
   * printed at first start and by `livedesk demo`) for a token of a new
   * session. Needs no token; the agent's other tokens go on working.
   * @param {string} code
   * @param {{baseUrl?: string}} [opts] default: the page's origin
   * @returns {Promise<{token: string, agent: object}>} throws ApiError on a spent, expired or unknown code
   */
  static login(code, { baseUrl } = {}) {
    return new LivedeskClient({ baseUrl }).request('POST', '/api/login', { body: { code } });
  }

  /**
   * POST /api/logout — end this client's token on the server, at once on
   * every process (its WebSockets close with 4001); the agent's other
   * tokens (other devices) go on. Sent with keepalive, so it completes when
   * the page is being left. Call `disconnect()` first to avoid the
   * `unauthorized` event of the closing socket.
   * @returns {Promise<null>}
   */
  logout() {
    return this.request('POST', '/api/logout', { keepalive: true });
  }

  /** GET /api/me — the agent of the token: `{id, name, email, avatar_url, role}`. */
  me() {
    return this.request('GET', '/api/me');
  }

  /**
   * GET /api/tickets — newest first.
   * @param {{status?: string, assignee?: 'me'|'none'|number|string, tag?: string, limit?: number, before?: any}} [filters]
   * @returns {Promise<object[]>} the tickets
   */
  async listTickets(filters = {}) {
    const { status, assignee, tag, limit, before } = filters;
    const data = await this.request('GET', '/api/tickets', { query: { status, assignee, tag, limit, before } });
    return (data && data.tickets) || [];
  }

  /**
   * POST /api/tickets
   * @param {{subject?: string, channel?: string, customer?: {email: string, name?: string}, body?: string}} ticket
   * @returns {Promise<object>} the created ticket
   */
  createTicket(ticket) {
    return this.request('POST', '/api/tickets', { body: ticket });
  }

  /**
   * GET /api/tickets/{id}
   * @returns {Promise<{ticket: object, messages: object[], presence: object[]}>}
   */
  getTicket(id) {
    return this.request('GET', `/api/tickets/${encodeURIComponent(id)}`);
  }

  /**
   * PATCH /api/tickets/{id} — all-or-nothing compare-and-set of fields.
   * @param {number} id
   * @param {Object<string, {from: any, to: any}>} changes e.g.
   *   `{status: {from: 'new', to: 'open'}, 'custom_fields.plan': {from: null, to: 'pro'}}`
   * @param {number} [ifMatch] demand that the whole ticket is still at this version
   * @returns {Promise<object>} the ticket after the change.
   *   Throws ApiError 409 `field_conflict` (`details.fields`), `already_assigned`
   *   (`details.assignee`) or `stale_version`.
   */
  patchTicket(id, changes, ifMatch) {
    const headers = ifMatch !== undefined && ifMatch !== null ? { 'If-Match': `"${ifMatch}"` } : undefined;
    return this.request('PATCH', `/api/tickets/${encodeURIComponent(id)}`, { body: { changes }, headers });
  }

  /**
   * POST /api/tickets/{id}/messages
   * @param {number} id
   * @param {{kind: 'reply'|'note'|'customer', body: string, seen_message_id?: number, client_id?: string, customer?: object}} message
   * @returns {Promise<object>} the message (also when a retried client_id returns the stored one).
   *   Throws ApiError 409 `duplicate_reply` with `details.replies`.
   */
  postMessage(id, message) {
    return this.request('POST', `/api/tickets/${encodeURIComponent(id)}/messages`, { body: message });
  }

  /**
   * POST /api/tickets/{id}/tags — deltas only; adding a present tag or removing
   * an absent one is a no-op.
   * @param {number} id
   * @param {string[]} [add]
   * @param {string[]} [remove]
   * @returns {Promise<{tags: string[], version: number}>}
   */
  changeTags(id, add = [], remove = []) {
    return this.request('POST', `/api/tickets/${encodeURIComponent(id)}/tags`, { body: { add, remove } });
  }

  /**
   * GET /api/tickets/{id}/events — in version order. A page stops at
   * `limit` events or 8 MiB, whichever comes first: page on with `since` =
   * the last version until a page comes back empty.
   * @param {number} id
   * @param {{since?: number, limit?: number}} [opts]
   * @returns {Promise<object[]>} the events
   */
  async listEvents(id, { since, limit } = {}) {
    const data = await this.request('GET', `/api/tickets/${encodeURIComponent(id)}/events`, { query: { since, limit } });
    return (data && data.events) || [];
  }

  /**
   * GET /api/fields — custom field definitions `{key, label, type, options, position}`,
   * sorted by position.
   * @returns {Promise<object[]>}
   */
  async listFields() {
    const data = await this.request('GET', '/api/fields');
    const list = Array.isArray(data) ? data : (data && data.fields) || [];
    return [...list].sort((a, b) => (a.position ?? 0) - (b.position ?? 0));
  }

  /** PUT /api/fields/{key} (admin) — create or change a field definition. */
  putField(key, definition) {
    return this.request('PUT', `/api/fields/${encodeURIComponent(key)}`, { body: definition });
  }

  /**
   * GET /api/tickets/{id}/messages — an older page of the conversation.
   * @param {number} id
   * @param {{before?: number, limit?: number}} [opts] `before`: the `messages_before` you hold
   * @returns {Promise<{messages: object[], messages_before: number|null}>} oldest first
   */
  listMessages(id, { before, limit } = {}) {
    return this.request('GET', `/api/tickets/${encodeURIComponent(id)}/messages`, { query: { before, limit } });
  }

  /**
   * PUT /api/tickets/{id}/draft — save my draft on a ticket (kept until sent
   * or deleted; colleagues see that I have one, never its body).
   * @param {number} id
   * @param {{kind: 'reply'|'note', body: string, seen_message_id?: number}} draft
   * @param {{keepalive?: boolean}} [opts] keepalive: survive the page being closed
   * @returns {Promise<{ticket_id, kind, body, seen_message_id, updated_at}>}
   */
  putDraft(id, draft, { keepalive } = {}) {
    return this.request('PUT', `/api/tickets/${encodeURIComponent(id)}/draft`, { body: draft, keepalive });
  }

  /** GET /api/tickets/{id}/draft — my draft (ApiError 404 `not_found` when there is none). */
  getDraft(id) {
    return this.request('GET', `/api/tickets/${encodeURIComponent(id)}/draft`);
  }

  /** DELETE /api/tickets/{id}/draft — idempotent. */
  deleteDraft(id, { keepalive } = {}) {
    return this.request('DELETE', `/api/tickets/${encodeURIComponent(id)}/draft`, { keepalive });
  }

  /**
   * GET /api/tickets/{id}/drafts (livedesk extension) — who has an unsent
   * draft on the ticket: `[{agent: {id, name, avatar_url}, kind, updated_at}]`.
   */
  async listDrafts(id) {
    const data = await this.request('GET', `/api/tickets/${encodeURIComponent(id)}/drafts`);
    return (data && data.drafts) || [];
  }

  /** GET /api/agents — enabled agents `{id, name, avatar_url, role}`, for assigning. */
  async listAgents() {
    const data = await this.request('GET', '/api/agents');
    return (data && data.agents) || [];
  }

  // ------------------------------------------------------------ WebSocket

  /** Open the WebSocket (idempotent). Reconnects by itself until `disconnect()`. */
  connect() {
    if (this._wanted) return;
    this._wanted = true;
    this._attempt = 0;
    if (typeof addEventListener === 'function') {
      addEventListener('online', this._onOnline);
      addEventListener('offline', this._onOffline);
    }
    this._setState(ConnectionState.CONNECTING);
    this._openNow();
  }

  /** Close the WebSocket and stop reconnecting. Subscriptions are kept for a later `connect()`. */
  disconnect() {
    this._wanted = false;
    if (typeof removeEventListener === 'function') {
      removeEventListener('online', this._onOnline);
      removeEventListener('offline', this._onOffline);
    }
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._stopHeartbeat();
    this._forgetSubscribes();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000, 'bye');
      } catch {
        /* already closed */
      }
    }
    this._setState(ConnectionState.OFFLINE);
  }

  _wsUrl() {
    const base = new URL(this.baseUrl + '/', typeof location !== 'undefined' ? location.href : undefined);
    base.protocol = base.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = new URL('ws', base);
    url.searchParams.set('access_token', this.token || '');
    return url.toString();
  }

  _openNow() {
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    if (!this._wanted || this._ws) return;
    let ws;
    try {
      ws = new this._WS(this._wsUrl());
    } catch (e) {
      console.error('livedesk-client: cannot open WebSocket', e);
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    ws.onmessage = (m) => this._onFrame(m.data);
    ws.onclose = (ev) => this._onClose(ws, ev);
    ws.onerror = () => {
      /* a close event always follows */
    };
  }

  _onClose(ws, ev) {
    if (ws !== this._ws) return;
    this._ws = null;
    this._stopHeartbeat();
    this._forgetSubscribes();
    for (const sub of this._subs.values()) sub.subscribed = false;
    if (!this._wanted) return;
    if (ev.code === 4001) {
      // The agent was disabled or its token replaced: reconnecting with this
      // token can only fail again. Stop, and let the application tell the user.
      this._wanted = false;
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      for (const sub of this._subs.values()) this._clearGapTimer(sub);
      this._setState(ConnectionState.OFFLINE);
      this._emit('unauthorized', ev.reason || 'Your access was revoked.', { code: 4001 });
      return;
    }
    // 1013 = "too slow, reconnect with since": come back at once.
    this._scheduleReconnect(ev.code === 1013 ? 0 : undefined);
  }

  _scheduleReconnect(delayMs) {
    if (!this._wanted) return;
    const offline = typeof navigator !== 'undefined' && navigator.onLine === false;
    this._setState(offline ? ConnectionState.OFFLINE : ConnectionState.RECONNECTING);
    if (delayMs === undefined) {
      const exp = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this._attempt);
      delayMs = exp / 2 + Math.random() * (exp / 2); // jitter
    }
    this._attempt += 1;
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => this._openNow(), delayMs);
  }

  _send(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1 || this._state !== ConnectionState.LIVE) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  _startHeartbeat() {
    this._stopHeartbeat();
    this._lastFrameAt = Date.now();
    const every = Math.max(1000, this._heartbeatMs);
    this._pingTimer = setInterval(() => {
      // Nothing heard (not even a pong) for two periods: the link is dead.
      if (Date.now() - this._lastFrameAt > 2 * every + 1000) {
        const ws = this._ws;
        this._ws = null;
        this._stopHeartbeat();
        if (ws) {
          ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
          try {
            ws.close(4000, 'heartbeat timeout');
          } catch {
            /* ignore */
          }
        }
        this._forgetSubscribes();
        for (const sub of this._subs.values()) sub.subscribed = false;
        this._scheduleReconnect();
        return;
      }
      this._send({ type: 'ping' });
      if (this._subscribesInFlight.size) this._pumpSubscribes();
    }, every);
  }

  _stopHeartbeat() {
    clearInterval(this._pingTimer);
    this._pingTimer = null;
  }

  _onFrame(raw) {
    this._lastFrameAt = Date.now();
    let f;
    try {
      f = JSON.parse(raw);
    } catch {
      console.warn('livedesk-client: ignoring a non-JSON frame');
      return;
    }
    this._emit('frame', f);
    switch (f.type) {
      case 'hello':
        return this._onHello(f);
      case 'subscribed': {
        this._queuePauseMs = 0;
        this._subscribeAnswered(Number(f.ticket_id), false);
        const sub = this._subs.get(Number(f.ticket_id));
        if (!sub) return;
        sub.subscribed = true;
        // Presence starts as 'viewing' on subscribe; restore what we said before.
        if (sub.presence && sub.presence !== 'viewing') {
          this._send({ type: 'presence', ticket_id: Number(f.ticket_id), state: sub.presence });
        }
        return this._call(sub, 'onSubscribed', f);
      }
      case 'snapshot': {
        const id = Number(f.ticket && f.ticket.id);
        const sub = this._subs.get(id);
        if (!sub) return;
        sub.version = f.ticket.version;
        return this._call(sub, 'onSnapshot', f);
      }
      case 'event':
        return this._onEvent(f);
      case 'presence': {
        const sub = this._subs.get(Number(f.ticket_id));
        if (sub) this._call(sub, 'onPresence', f.viewers || [], f);
        return;
      }
      case 'inbox':
        for (const fn of [...this._inboxHandlers]) {
          try {
            fn(f.ticket, f);
          } catch (e) {
            console.error('livedesk-client: inbox handler failed', e);
          }
        }
        return;
      case 'reset':
        return this._onReset(f);
      case 'fields':
        // Proposed extension: the field definitions after a change (PUT /api/fields).
        if (Array.isArray(f.fields)) this._emit('fields', f.fields);
        return;
      case 'error': {
        // A refused subscribe (protocol.md): `since` beyond the ticket's
        // version means the database went back in time (treated like
        // `reset`); `unavailable` and `rate_limited` go back in the queue,
        // which pauses (backed off) before sending more. The refusals name
        // their ticket; one without (an old server) cannot be matched.
        const id = f.ticket_id !== undefined && f.ticket_id !== null ? Number(f.ticket_id) : null;
        const sub = id !== null ? this._subs.get(id) : null;
        const retry = f.code === 'unavailable' || f.code === 'rate_limited';
        if (id !== null && this._subscribesInFlight.has(id) && (retry || FINAL_REFUSALS.has(f.code))) {
          this._subscribeAnswered(id, retry);
        }
        if (sub && f.code === 'invalid_field' && sub.version !== null) {
          this._onReset({ type: 'reset', ticket_id: id, version: null });
        } else if (sub && f.code === 'unavailable') {
          sub.subscribed = false; // an `unavailable` subscribe drops the subscription
        } else if (id !== null && f.code === 'rate_limited' && !this._subscribeQueue.has(id)) {
          // Past the frame budget a `presence` or `unsubscribe` was dropped:
          // say it again after a pause (what is true then).
          setTimeout(() => this._restate(id), REFUSED_PAUSE_MIN_MS);
        }
        return this._emit('server-error', f);
      }
      case 'pong':
        return;
      default:
        return; // unknown frame types are allowed by the contract (it may add)
    }
  }

  _onHello(f) {
    this.agent = f.agent || null;
    this._heartbeatMs = Number(f.heartbeat_ms) || DEFAULT_HEARTBEAT_MS;
    this._attempt = 0;
    // Queue every ticket before going live: a `state` listener that
    // subscribes then joins this queue instead of being sent twice.
    this._forgetSubscribes();
    for (const [id, sub] of this._subs) {
      this._clearGapTimer(sub); // this re-subscribe is the attempt (the count is kept)
      this._subscribeQueue.add(id);
    }
    this._setState(ConnectionState.LIVE);
    this._startHeartbeat();
    this._pumpSubscribes();
    if (this._inboxHandlers.size) this._send({ type: 'subscribe_inbox' });
    this._emit('hello', f);
  }

  /**
   * Subscribe (again) to a ticket: queued, and sent when fewer than
   * SUBSCRIBE_WINDOW subscribes wait for their answer, with `since` = the
   * version applied by then. One already in flight is sent again after its
   * answer (what it asked for may be out of date).
   */
  _sendSubscribe(id, sub) {
    if (this._subscribesInFlight.has(id)) {
      sub.subscribeAgain = true;
      return;
    }
    this._subscribeQueue.add(id);
    this._pumpSubscribes();
  }

  /** Send queued subscribes while the window has room and the queue is not paused. */
  _pumpSubscribes() {
    clearTimeout(this._queueTimer);
    this._queueTimer = null;
    if (this._state !== ConnectionState.LIVE) return;
    const now = Date.now();
    for (const [id, sentAt] of this._subscribesInFlight) {
      if (now - sentAt > SUBSCRIBE_ANSWER_MS) {
        this._subscribesInFlight.delete(id);
        this._subscribeQueue.add(id);
      }
    }
    const wait = this._queuePausedUntil - Date.now();
    if (wait > 0) {
      if (this._subscribeQueue.size) this._queueTimer = setTimeout(() => this._pumpSubscribes(), wait);
      return;
    }
    for (const id of this._subscribeQueue) {
      if (this._subscribesInFlight.size >= SUBSCRIBE_WINDOW) return;
      this._subscribeQueue.delete(id);
      const sub = this._subs.get(id);
      if (!sub) continue;
      const frame = { type: 'subscribe', ticket_id: id };
      if (sub.version !== null && sub.version !== undefined) frame.since = sub.version;
      if (!this._send(frame)) {
        this._subscribeQueue.add(id);
        return;
      }
      sub.subscribeAgain = false;
      this._subscribesInFlight.set(id, Date.now());
    }
  }

  /** A subscribe was answered; `retry`: it was refused for now (send it again after a pause). */
  _subscribeAnswered(id, retry) {
    if (!this._subscribesInFlight.delete(id)) return;
    const sub = this._subs.get(id);
    if (sub && (retry || sub.subscribeAgain)) {
      sub.subscribeAgain = false;
      this._subscribeQueue.add(id);
    }
    // One pause per burst of refusals (the window's other subscribes are
    // refused at the same moment): it doubles only when refusals go on after it.
    if (retry && Date.now() >= this._queuePausedUntil) {
      this._queuePauseMs = Math.min(REFUSED_PAUSE_MAX_MS, Math.max(REFUSED_PAUSE_MIN_MS, this._queuePauseMs * 2));
      const pause = this._queuePauseMs / 2 + Math.random() * (this._queuePauseMs / 2);
      this._queuePausedUntil = Date.now() + pause;
    }
    this._pumpSubscribes();
  }

  /** Send again what a dropped frame said about a ticket: my presence, or that I left it. */
  _restate(id) {
    const sub = this._subs.get(id);
    if (!sub) this._send({ type: 'unsubscribe', ticket_id: id });
    else if (sub.subscribed && !this._subscribesInFlight.has(id)) this._send({ type: 'presence', ticket_id: id, state: sub.presence });
  }

  /** The connection is gone: nothing is in flight any more, and `hello` queues every ticket again. */
  _forgetSubscribes() {
    clearTimeout(this._queueTimer);
    this._queueTimer = null;
    this._subscribeQueue.clear();
    this._subscribesInFlight.clear();
    this._queuePausedUntil = 0;
    this._queuePauseMs = 0;
  }

  _onEvent(ev, { fromHttp = false } = {}) {
    const id = Number(ev.ticket_id);
    const sub = this._subs.get(id);
    if (!sub) return;
    const v = Number(ev.version);
    if (sub.version === null) return; // waiting for a snapshot: it will include this
    if (v <= sub.version) return; // already applied: drop
    if (v > sub.version + 1) {
      // A gap: never apply out of order. Ask again from what we have, later.
      if (!fromHttp) this._scheduleResync(id, sub);
      return;
    }
    sub.version = v;
    if (sub.gapAt !== null && v > sub.gapAt) {
      // Past the gap: the next one starts with a short delay again.
      sub.gapAt = null;
      sub.gapAttempts = 0;
      this._clearGapTimer(sub);
    }
    this._call(sub, 'onEvent', ev);
  }

  _clearGapTimer(sub) {
    clearTimeout(sub.gapTimer);
    sub.gapTimer = null;
  }

  /**
   * A gap was seen: re-subscribe after a backoff (exponential, jittered,
   * capped), catching up over HTTP at the same time. Attempts are counted
   * per stuck version; after GAP_ATTEMPTS_BEFORE_SNAPSHOT the version is
   * given up and a snapshot taken instead. At most one attempt is pending.
   */
  _scheduleResync(id, sub) {
    if (sub.gapTimer) return;
    if (sub.gapAt !== sub.version) {
      sub.gapAt = sub.version;
      sub.gapAttempts = 0;
    }
    const attempt = sub.gapAttempts;
    sub.gapAttempts += 1;
    const exp = Math.min(GAP_BACKOFF_MAX_MS, GAP_BACKOFF_MIN_MS * 2 ** attempt);
    const delay = exp / 2 + Math.random() * (exp / 2);
    sub.gapTimer = setTimeout(() => {
      sub.gapTimer = null;
      if (this._subs.get(id) !== sub) return;
      if (attempt >= GAP_ATTEMPTS_BEFORE_SNAPSHOT) {
        // The missing version is not coming: start again from a snapshot.
        console.warn(`livedesk-client: ticket ${id} stays incomplete after version ${sub.version}; taking a snapshot`);
        sub.version = null;
        sub.gapAt = null; // the next gap (if any) starts a new count, still backed off by gapAttempts
        this._sendSubscribe(id, sub);
        return;
      }
      this._resync(id, sub);
    }, delay);
  }

  /** Re-subscribe with `since` over WS, and catch up over HTTP meanwhile. */
  _resync(id, sub) {
    this._sendSubscribe(id, sub);
    if (sub.resyncing) return;
    sub.resyncing = true;
    const catchUp = async () => {
      for (;;) {
        if (this._subs.get(id) !== sub || sub.version === null) return;
        const since = sub.version;
        const page = await this.request('GET', `/api/tickets/${encodeURIComponent(id)}/events`, {
          query: { since, limit: EVENTS_PAGE },
        });
        const events = (page && page.events) || [];
        for (const ev of events) this._onEvent(ev, { fromHttp: true });
        // A page may stop short of the limit (8 MiB): `more` says whether it was the end.
        const more = page && typeof page.more === 'boolean' ? page.more : events.length >= EVENTS_PAGE;
        if (!more || sub.version === since) return;
      }
    };
    catchUp()
      .catch((e) => console.warn('livedesk-client: catch-up over HTTP failed', e))
      .finally(() => {
        sub.resyncing = false;
      });
  }

  /** `reset`: the database went back in time. Forget the ticket's state and take a snapshot. */
  _onReset(f) {
    const id = Number(f.ticket_id);
    const sub = this._subs.get(id);
    if (!sub) return;
    this._clearGapTimer(sub);
    sub.version = null;
    sub.gapAt = null;
    sub.gapAttempts = 0;
    this._call(sub, 'onReset', f);
    this._sendSubscribe(id, sub);
  }

  _call(sub, name, ...args) {
    const fn = sub.handlers && sub.handlers[name];
    if (!fn) return;
    try {
      fn(...args);
    } catch (e) {
      console.error(`livedesk-client: ${name} handler failed`, e);
    }
  }

  /**
   * Follow one ticket: snapshot (unless `since` is given), then every event
   * exactly once and in version order, across reconnects. One subscription per
   * ticket: subscribing again replaces the handlers.
   * @param {number} ticketId
   * @param {{onSnapshot?: Function, onEvent?: Function, onPresence?: Function, onSubscribed?: Function, onReset?: Function}} handlers
   *   onSnapshot({ticket, messages, messages_before}); onEvent(event); onPresence(viewers, frame);
   *   onSubscribed({ticket_id, version}); onReset({ticket_id, version}): drop what you hold for
   *   the ticket (a snapshot follows)
   * @param {{since?: number}} [opts] the version you already have (e.g. from getTicket)
   * @returns {() => void} unsubscribes
   */
  subscribe(ticketId, handlers, { since } = {}) {
    const id = Number(ticketId);
    const existing = this._subs.get(id);
    if (existing) {
      existing.handlers = handlers || {};
      if (since !== undefined && since !== null && (existing.version === null || since > existing.version)) {
        existing.version = since;
      }
      return () => this.unsubscribe(id);
    }
    const sub = {
      handlers: handlers || {},
      version: since !== undefined && since !== null ? Number(since) : null,
      presence: 'viewing',
      subscribed: false,
      resyncing: false,
      gapTimer: null,
      gapAt: null,
      gapAttempts: 0,
      subscribeAgain: false,
    };
    this._subs.set(id, sub);
    this._sendSubscribe(id, sub);
    return () => this.unsubscribe(id);
  }

  /** Stop following a ticket (also removes my presence there). */
  unsubscribe(ticketId) {
    const id = Number(ticketId);
    const sub = this._subs.get(id);
    if (!sub) return;
    this._clearGapTimer(sub);
    this._subs.delete(id);
    // A subscribe that never left the queue has nothing to undo on the server.
    const neverSent = this._subscribeQueue.delete(id) && !sub.subscribed && !this._subscribesInFlight.has(id);
    if (!neverSent) this._send({ type: 'unsubscribe', ticket_id: id });
  }

  /** The last version applied for a subscribed ticket, or null. */
  appliedVersion(ticketId) {
    const sub = this._subs.get(Number(ticketId));
    return sub ? sub.version : null;
  }

  /**
   * Receive a ticket summary for every ticket created or changed from now on.
   * Frames sent while disconnected are lost: reload your list when `state`
   * becomes 'live' again.
   * @param {(ticket: object) => void} handler
   * @returns {() => void} removes the handler
   */
  subscribeInbox(handler) {
    const first = this._inboxHandlers.size === 0;
    this._inboxHandlers.add(handler);
    if (first) this._send({ type: 'subscribe_inbox' });
    return () => this._inboxHandlers.delete(handler);
  }

  /**
   * Tell colleagues what I am doing on a subscribed ticket. Only changes are
   * sent; the state is restored after a reconnect.
   * @param {number} ticketId
   * @param {'viewing'|'typing'|'idle'} state
   */
  setPresence(ticketId, state) {
    const id = Number(ticketId);
    const sub = this._subs.get(id);
    if (!sub || sub.presence === state) return;
    sub.presence = state;
    if (sub.subscribed) this._send({ type: 'presence', ticket_id: id, state });
  }
}

/**
 * Apply one event to a ticket you hold (from a `snapshot` frame or
 * `getTicket`), the way contract v2 §6 asks: `ticket.updated` carries only
 * `data.changes` (field → `{from, to}`), no copy of the ticket. Returns
 * `{ticket, complete}`: a new ticket object (the one passed in is not
 * changed) at the event's version, and `complete: false` when a change could
 * not be built locally (an agent missing from `agents`, a new customer):
 * read the ticket again (`getTicket`) then. Events at or below the ticket's
 * version change nothing.
 * @param {object} ticket the ticket as shown
 * @param {object} event an `event` frame, applied in version order
 * @param {{agents?: Map<number, {id:number, name:string, avatar_url?:string|null}>}} [opts]
 *   the agent directory (`GET /api/agents`), by id, for `assignee_id`
 * @returns {{ticket: object, complete: boolean}}
 */
export function applyTicketEvent(ticket, event, { agents } = {}) {
  const version = Number(event.version);
  if (!ticket || !(version > Number(ticket.version))) return { ticket, complete: true };
  const data = event.data || {};
  const next = { ...ticket, version, updated_at: event.at || ticket.updated_at };
  let complete = true;
  switch (event.kind) {
    case 'ticket.updated':
      next.custom_fields = { ...(ticket.custom_fields || {}) };
      for (const [field, change] of Object.entries(data.changes || {})) {
        const to = change ? change.to : null;
        if (field === 'subject' || field === 'status' || field === 'priority' || field === 'channel') {
          next[field] = to;
        } else if (field.startsWith('custom_fields.')) {
          const key = field.slice('custom_fields.'.length);
          if (to === null || to === undefined) delete next.custom_fields[key];
          else next.custom_fields[key] = to;
        } else if (field === 'assignee_id') {
          const agent = to === null || to === undefined ? null : agents && agents.get(Number(to));
          if (to === null || to === undefined) next.assignee = null;
          else if (agent) next.assignee = { id: agent.id, name: agent.name, avatar_url: agent.avatar_url ?? null };
          else {
            next.assignee = { id: Number(to), name: null, avatar_url: null };
            complete = false;
          }
        } else {
          complete = false; // customer_id (its name is not in the event), or a field added later
        }
      }
      break;
    case 'tags.changed':
      if (Array.isArray(data.tags)) next.tags = data.tags;
      break;
    case 'ticket.created':
      return { ticket: data.ticket || next, complete: Boolean(data.ticket) };
    default:
      break; // message.created: the ticket only moves to the new version
  }
  return { ticket: next, complete };
}

export default LivedeskClient;
