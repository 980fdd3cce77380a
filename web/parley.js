// parley.js: the JavaScript SDK for the Parley chat protocol, version 1 with the
// version 2 additions (edit, delete, reactions, replies, attachments, search).
//
// One ES module, no dependencies. Works in browsers and in Node (pass the `ws`
// package's WebSocket, and fetch if your Node has none). See docs/SDK.md.
//
//   import { ParleyClient } from '/parley.js';
//   const client = new ParleyClient();            // same origin as the page
//   client.on('message', (m) => console.log(m.conv, m.seq, m.body));
//   await client.login('alice', 'correct horse');  // connects the socket too
//   await client.send(42, 'hello');                // resolves with the ack
//
// What it does for you:
// - access tokens refreshed before they expire and on any 401 (refresh tokens are
//   rotated; concurrent refreshes, even from several tabs, are serialised);
// - one WebSocket, authenticated with a first `auth` frame, reconnected with capped
//   exponential backoff and jitter; a `sync` with the last seq held per conversation
//   on every (re)connect;
// - `send()` gives every message a client id at creation and keeps it through every
//   retry, so resends after a reconnect can never duplicate;
// - messages reach the app once, in seq order per conversation; a seq that skips
//   ahead triggers a sync that fills the gap first;
// - dead connections are noticed: browser offline/online events, and a client-side
//   ping when the socket has been silent;
// - changes to messages (edits, deletes, reactions) arrive as `update` events; the
//   last `mod` held per conversation goes into every sync, so a reconnecting client
//   ends with every message in its current state;
// - in a browser, unacked sends are kept in IndexedDB: a message written offline
//   survives a closed tab and goes out (once: same client id) when the app opens again.

export const PROTOCOL_VERSION = 2;
export const STATES = Object.freeze(['offline', 'connecting', 'online', 'reconnecting']);

const OPEN = 1; // WebSocket.OPEN, the same in browsers and in `ws`
const EXPECTS_ANSWER = new Set(['send', 'sync', 'ping', 'edit', 'delete', 'react']);
const SYNC_UPDATES_MAX = 200; // update frames per conversation in one sync answer, at most
const RETRYABLE_SEND_ERRORS = new Set(['rate_limited', 'unavailable', 'internal']);
const CODE_OF_STATUS = {
  400: 'bad_request', 401: 'unauthorized', 403: 'forbidden', 404: 'not_found', 409: 'conflict',
  413: 'too_large', 429: 'rate_limited', 500: 'internal', 503: 'unavailable',
};

/** An error from the server (HTTP or WebSocket) or from the SDK's own checks. */
export class ParleyError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = 'ParleyError';
    this.code = code;
    if (extra.status !== undefined) this.status = extra.status;
    if (extra.retryAfter !== undefined) this.retryAfter = extra.retryAfter;
    if (extra.id !== undefined) this.id = extra.id;
  }
}

/** A new client id for a message: unique per sender across all conversations. */
export function newClientId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === 'function') c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

// The optional fields a message carries when they apply (version 2).
const MESSAGE_EXTRAS = ['reply_to', 'attachments', 'edited_at', 'deleted', 'reactions', 'mod'];

/** A message as the SDK hands it to the app: the version 1 fields, plus the version 2 ones present. */
export function normalizeMessage(m, conv, seq) {
  const out = { conv: m.conv ?? conv, seq: m.seq ?? seq, from: m.from, id: m.id, body: m.body ?? '', ts: m.ts };
  for (const k of MESSAGE_EXTRAS) if (m[k] !== undefined && m[k] !== null) out[k] = m[k];
  return out;
}

// A request through IndexedDB's callback API, as a promise.
function idbDone(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

// The offline outbox: unacked sends, one record per client id, in IndexedDB so they
// survive a closed tab. Writes are chained so `saved()` means everything so far is on disk.
class IdbOutbox {
  constructor(idb, name) {
    this._idb = idb;
    this._name = name;
    this._db = null;
    this._chain = Promise.resolve();
  }
  _open() {
    if (!this._db) {
      const req = this._idb.open(this._name, 1);
      req.onupgradeneeded = () => {
        const db = req.result;
        if (!db.objectStoreNames.contains('outbox')) db.createObjectStore('outbox', { keyPath: 'id' });
      };
      this._db = idbDone(req);
    }
    return this._db;
  }
  async _tx(mode, fn) {
    const db = await this._open();
    const tx = db.transaction('outbox', mode);
    const out = fn(tx.objectStore('outbox'));
    await new Promise((resolve, reject) => {
      tx.oncomplete = resolve;
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
    return out ? out.result : undefined;
  }
  _queue(fn) {
    const p = this._chain.then(fn, fn);
    this._chain = p.catch(() => {});
    return p;
  }
  put(rec) { return this._queue(() => this._tx('readwrite', (st) => { st.put(rec); })); }
  del(id) { return this._queue(() => this._tx('readwrite', (st) => { st.delete(id); })); }
  all() { return this._queue(() => this._tx('readonly', (st) => st.getAll())); }
  async clearUser(user) {
    const recs = await this.all();
    for (const r of recs || []) if (r.user === user) this.del(r.id);
    return this._chain;
  }
  saved() { return this._chain; }
}

function utf8Length(s) {
  if (typeof TextEncoder !== 'undefined') return new TextEncoder().encode(s).length;
  return unescape(encodeURIComponent(s)).length;
}

// Session storage: {user, access_token, refresh_token, expires_at}. Accepts a
// Storage (localStorage), an object {get, set, clear}, or false for memory only.
function makeStorage(opt, key) {
  let mem = null;
  const memory = { get: () => mem, set: (v) => { mem = v; }, clear: () => { mem = null; } };
  let store = opt;
  if (store === undefined) {
    try { store = globalThis.localStorage || false; } catch { store = false; }
  }
  if (!store) return memory;
  if (typeof store.getItem === 'function') {
    return {
      get() { try { return JSON.parse(store.getItem(key) || 'null'); } catch { return null; } },
      set(v) { try { store.setItem(key, JSON.stringify(v)); } catch { /* quota, private mode */ } },
      clear() { try { store.removeItem(key); } catch { /* ignore */ } },
      key,
    };
  }
  if (typeof store.get === 'function') return store;
  return memory;
}

export class ParleyClient {
  /**
   * @param {object} [opts]
   * @param {string} [opts.url]  server base URL (default: the page's origin)
   * @param {string} [opts.wsUrl]  WebSocket URL (default: url with ws(s): and /ws)
   * @param {Function} [opts.WebSocket]  WebSocket constructor (default: globalThis.WebSocket)
   * @param {Function} [opts.fetch]  fetch implementation (default: globalThis.fetch)
   * @param {Storage|object|false} [opts.storage]  where the session lives (default: localStorage if any)
   * @param {string} [opts.storageKey]  key in that storage (default 'parley.session')
   * @param {boolean} [opts.autoConnect]  connect after login/signup/resume (default true)
   * @param {boolean} [opts.autoRefresh]  refresh the access token before it expires (default true)
   * @param {object} [opts.reconnect]  {initialMs: 300, maxMs: 15000, factor: 2}
   * @param {number} [opts.pingIntervalMs]  ping a socket silent this long (default 15000)
   * @param {number} [opts.pingTimeoutMs]  drop a socket that stays silent this long after a request (default 7000)
   * @param {number} [opts.connectTimeoutMs]  give up on a connection without hello after this (default 10000)
   * @param {number} [opts.maxBodyBytes]  refuse longer bodies locally (default 4096)
   * @param {boolean} [opts.watchNetwork]  listen to browser online/offline/visibility events (default true)
   * @param {IDBFactory|false} [opts.outbox]  where unacked sends survive a closed tab (default: indexedDB if any)
   * @param {number} [opts.maxUploadBytes]  refuse larger uploads locally (default 10 MiB, the server's default)
   * @param {Function} [opts.XMLHttpRequest]  used for uploads with progress (default: globalThis.XMLHttpRequest)
   */
  constructor(opts = {}) {
    const loc = globalThis.location;
    const base = opts.url || opts.baseUrl || (loc && loc.origin && loc.origin !== 'null' ? loc.origin : '');
    this.baseUrl = String(base).replace(/\/+$/, '');
    this.wsUrl = opts.wsUrl || (this.baseUrl ? this.baseUrl.replace(/^http/i, 'ws') + '/ws' : '');
    this._WS = opts.WebSocket || globalThis.WebSocket;
    const f = opts.fetch || globalThis.fetch;
    this._fetch = f ? (...a) => f(...a) : null;
    this._storage = makeStorage(opts.storage, opts.storageKey || 'parley.session');
    this.options = {
      autoConnect: opts.autoConnect !== false,
      autoRefresh: opts.autoRefresh !== false,
      reconnect: { initialMs: 300, maxMs: 15000, factor: 2, ...(opts.reconnect || {}) },
      pingIntervalMs: opts.pingIntervalMs ?? 15000,
      pingTimeoutMs: opts.pingTimeoutMs ?? 7000,
      connectTimeoutMs: opts.connectTimeoutMs ?? 10000,
      maxBodyBytes: opts.maxBodyBytes ?? 4096,
      typingThrottleMs: opts.typingThrottleMs ?? 2500,
      maxUploadBytes: opts.maxUploadBytes ?? 10 * 1024 * 1024,
    };
    this._XHR = opts.XMLHttpRequest === undefined ? globalThis.XMLHttpRequest : opts.XMLHttpRequest;
    let idb = opts.outbox;
    if (idb === undefined) { try { idb = globalThis.indexedDB || false; } catch { idb = false; } }
    this._idb = idb ? new IdbOutbox(idb, `parley.outbox:${opts.storageKey || 'parley.session'}`) : null;
    this._handlers = new Map();
    this.session = null; // {user, access_token, refresh_token, expires_at}
    this.user = null;
    this.state = 'offline';
    this._wanted = false; // should a socket be open?
    this._conn = null; // {ws, gen, authed, lastRx, ...}
    this._gen = 0;
    this._attempt = 0;
    this._everOnline = false;
    this._timers = { reconnect: null, refresh: null, ping: null, expect: null, connect: null, stable: null };
    this._cursors = new Map(); // conv -> highest seq delivered in order
    this._buffers = new Map(); // conv -> Map(seq -> msg) waiting for a gap to fill
    this._outbox = new Map(); // client id -> pending send, in creation order
    this._ops = new Map(); // op id -> pending edit/delete/react sent over the socket
    this._opSeq = 0;
    // Changes: per conversation the highest mod up to which every change is held, the mods
    // seen above it (a gap being repaired), and per message the mod of the state last handed
    // to the app (so an older state never overwrites a newer one).
    this._mods = new Map(); // conv -> mod
    this._modsAbove = new Map(); // conv -> Set(mod)
    this._msgMods = new Map(); // conv -> Map(seq -> mod)
    this._uploadSeq = 0;
    this._reads = new Map(); // conv -> highest read seq we want the server to know
    this._readsSent = new Map();
    this._typingAt = new Map();
    this._online = new Set(); // user ids reported online
    this._presenceBefore = null;
    this._sync = { inFlight: false, again: false, stuck: 0, total: -1, updates: new Map() };
    this._refreshing = null;
    this._browserOffline = false;
    this._watch = opts.watchNetwork !== false;
    this._listeners = [];
    this._installBrowserHooks();
  }

  // ------------------------------------------------------------------ events
  /** Subscribe to an event; returns a function that unsubscribes. */
  on(name, fn) {
    if (!this._handlers.has(name)) this._handlers.set(name, new Set());
    this._handlers.get(name).add(fn);
    return () => this.off(name, fn);
  }
  off(name, fn) { this._handlers.get(name)?.delete(fn); }
  once(name, fn) {
    const off = this.on(name, (...a) => { off(); fn(...a); });
    return off;
  }
  _emit(name, ...args) {
    const set = this._handlers.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try { fn(...args); } catch (e) {
        if (typeof globalThis.reportError === 'function') globalThis.reportError(e);
        else console.error(e);
      }
    }
  }

  // ------------------------------------------------------------------ accounts
  /** Create an account and log in. Resolves with the user. */
  async signup({ username, password, display_name } = {}) {
    const body = { username, password };
    if (display_name) body.display_name = display_name;
    const res = await this._http('POST', '/api/auth/signup', body, { auth: false });
    this._startSession(res);
    return res.user;
  }

  /** Log in; accepts (username, password) or ({username, password}). Resolves with the user. */
  async login(username, password) {
    if (username && typeof username === 'object') ({ username, password } = username);
    const res = await this._http('POST', '/api/auth/login', { username, password }, { auth: false });
    this._startSession(res);
    return res.user;
  }

  /**
   * Restore the stored session (e.g. after a page reload). Resolves with the user,
   * or null when there is no usable session. Offline, the stored session is kept
   * and the client keeps trying to connect.
   */
  async resume() {
    const stored = this._storage.get();
    if (!stored || typeof stored.refresh_token !== 'string' || !stored.user) return null;
    this.session = stored;
    this.user = stored.user;
    if (!(stored.expires_at - Date.now() > 10000)) {
      try { await this.refresh(); } catch (e) {
        if (!this.session) return null; // refresh token refused: logged out
        // network trouble: keep the session, the socket will retry
      }
    } else {
      this._scheduleRefresh();
    }
    if (!this.session) return null;
    this._emit('session', this.user);
    this._loadOutbox();
    if (this.options.autoConnect) this.connect();
    return this.user;
  }

  /** Log out: revoke the refresh token, close the socket, forget the session. */
  async logout() {
    // the newest refresh token of this session (another tab may have rotated ours)
    const stored = this._storage.get();
    const same = stored && this.session && stored.user && stored.user.id === this.session.user.id;
    const rt = same && stored.refresh_token ? stored.refresh_token : this.session && this.session.refresh_token;
    this._endSession('logout');
    if (rt) {
      try { await this._http('POST', '/api/auth/logout', { refresh_token: rt }, { auth: false }); } catch { /* best effort */ }
    }
  }

  get loggedIn() { return !!this.session; }

  _startSession(res) {
    this._setSession(res);
    this._emit('session', this.user);
    this._loadOutbox();
    if (this.options.autoConnect) this.connect();
  }

  _setSession(res) {
    const prevUser = this.user;
    // JWT `exp` is in whole seconds, so the server may expire the token up to 1s
    // before `expires_in` says: count that second off.
    const ttl = (res.expires_in || 900) * 1000;
    const life = res.lifetime || ttl - Math.min(1000, ttl / 4);
    this.session = {
      user: res.user,
      access_token: res.access_token,
      refresh_token: res.refresh_token,
      expires_at: res.expires_at || Date.now() + life,
      lifetime: life,
    };
    if (prevUser && res.user && prevUser.id !== res.user.id) this._resetConversationState();
    this.user = res.user;
    this._storage.set(this.session);
    this._scheduleRefresh();
    // extend the open socket's authorization to the new token
    const c = this._conn;
    if (c && c.authed && c.ws.readyState === OPEN) this._sendFrame({ op: 'auth', token: this.session.access_token });
    this._emit('token', { expires_at: this.session.expires_at });
  }

  _endSession(reason) {
    const had = !!this.session;
    const uid = this.user && this.user.id;
    this.session = null;
    this.user = null;
    this._storage.clear();
    clearTimeout(this._timers.refresh);
    this.disconnect();
    const err = new ParleyError('unauthorized', 'logged out');
    for (const e of this._outbox.values()) e.reject(err);
    this._outbox.clear();
    for (const o of this._ops.values()) o.reject(err);
    this._ops.clear();
    // An explicit logout forgets the messages still waiting (they are this user's private
    // text); an expired session keeps them for the next login of the same user.
    if (reason === 'logout' && this._idb && uid !== undefined && uid !== null) this._idb.clearUser(uid).catch(() => {});
    this._resetConversationState();
    if (had) this._emit('session', null, reason);
  }

  _resetConversationState() {
    this._cursors.clear();
    this._mods.clear();
    this._modsAbove.clear();
    this._msgMods.clear();
    this._buffers.clear();
    this._reads.clear();
    this._readsSent.clear();
    this._online.clear();
  }

  // ------------------------------------------------------------------ tokens
  /** Refresh the access token now (single flight). Resolves when done. */
  refresh() {
    if (!this._refreshing) {
      const run = () => this._doRefresh();
      const locks = globalThis.navigator && globalThis.navigator.locks;
      const p = locks && typeof locks.request === 'function' && this._storage.key
        ? locks.request(`parley-refresh:${this._storage.key}`, run)
        : run();
      this._refreshing = p.finally(() => { this._refreshing = null; });
    }
    return this._refreshing;
  }

  async _doRefresh() {
    if (!this.session) throw new ParleyError('unauthorized', 'not logged in');
    const mine = this.session;
    // Another tab may have rotated the refresh token already: adopt its session.
    const stored = this._storage.get();
    const same = stored && stored.user && mine.user && stored.user.id === mine.user.id;
    if (same && stored.refresh_token !== mine.refresh_token && stored.expires_at - Date.now() > 5000) {
      this._setSession(stored);
      return;
    }
    const rt = same && stored.refresh_token ? stored.refresh_token : mine.refresh_token;
    let res;
    try {
      res = await this._http('POST', '/api/auth/refresh', { refresh_token: rt }, { auth: false });
    } catch (e) {
      if (e.status === 401 || e.status === 400) this._endSession('expired');
      throw e;
    }
    if (!this.session) return; // logged out meanwhile
    this._setSession(res);
  }

  _scheduleRefresh(delayOverride) {
    clearTimeout(this._timers.refresh);
    if (!this.session || !this.options.autoRefresh) return;
    const left = this.session.expires_at - Date.now();
    const margin = this._margin(0.25, 60000);
    const delay = delayOverride ?? Math.max(0, left - margin);
    this._timers.refresh = setTimeout(() => {
      this.refresh().catch(() => {
        if (this.session) this._scheduleRefresh(3000 + Math.random() * 2000);
      });
    }, delay);
  }

  // How long before expiry a token counts as stale: a share of its lifetime, capped.
  _margin(share, cap) {
    const life = (this.session && this.session.lifetime) || 900000;
    return Math.min(cap, Math.max(300, life * share));
  }

  /** A valid access token, refreshed first when it expires within minValidMs. */
  async accessToken(minValidMs = this._margin(0.15, 5000)) {
    if (!this.session) throw new ParleyError('unauthorized', 'not logged in');
    if (this.session.expires_at - Date.now() > minValidMs) return this.session.access_token;
    await this.refresh();
    if (!this.session) throw new ParleyError('unauthorized', 'not logged in');
    return this.session.access_token;
  }

  // ------------------------------------------------------------------ HTTP
  async _http(method, path, body, { auth = true, retry = true } = {}) {
    if (!this._fetch) throw new ParleyError('internal', 'no fetch implementation: pass options.fetch');
    const headers = { accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    let token = null;
    if (auth) {
      token = await this.accessToken();
      headers.authorization = `Bearer ${token}`;
    }
    let res;
    try {
      res = await this._fetch(this.baseUrl + path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ParleyError('network', `network error: ${e && e.message ? e.message : e}`, { status: 0 });
    }
    if (res.status === 401 && auth && retry && this.session) {
      if (this.session.access_token === token) {
        try { await this.refresh(); } catch { /* _endSession ran if refused */ }
      }
      if (this.session) return this._http(method, path, body, { auth, retry: false });
    }
    if (res.status === 204) return null;
    const text = await res.text();
    let data = null;
    if (text) { try { data = JSON.parse(text); } catch { data = null; } }
    if (!res.ok) {
      const err = data && data.error ? data.error : {};
      const ra = res.headers && res.headers.get ? Number(res.headers.get('retry-after')) : NaN;
      throw new ParleyError(err.code || CODE_OF_STATUS[res.status] || 'internal',
        err.message || `HTTP ${res.status}`, { status: res.status, retryAfter: Number.isFinite(ra) && ra > 0 ? ra : undefined });
    }
    return data;
  }

  // An authenticated request whose answer is not JSON (attachment bytes): the Response,
  // after one refresh-and-retry on 401; errors as ParleyError.
  async _authFetch(method, path, { body, headers = {}, signal } = {}, retry = true) {
    if (!this._fetch) throw new ParleyError('internal', 'no fetch implementation: pass options.fetch');
    const token = await this.accessToken();
    let res;
    try {
      res = await this._fetch(this.baseUrl + path, { method, body, signal, headers: { ...headers, authorization: `Bearer ${token}` } });
    } catch (e) {
      if (e && e.name === 'AbortError') throw new ParleyError('cancelled', 'request aborted');
      throw new ParleyError('network', `network error: ${e && e.message ? e.message : e}`, { status: 0 });
    }
    if (res.status === 401 && retry && this.session) {
      if (this.session.access_token === token) {
        try { await this.refresh(); } catch { /* _endSession ran if refused */ }
      }
      if (this.session) return this._authFetch(method, path, { body, headers, signal }, false);
    }
    if (!res.ok) {
      let data = null;
      try { data = JSON.parse(await res.text()); } catch { data = null; }
      const err = data && data.error ? data.error : {};
      throw new ParleyError(err.code || CODE_OF_STATUS[res.status] || 'internal', err.message || `HTTP ${res.status}`, { status: res.status });
    }
    return res;
  }

  /** Authenticated request to any route: api('GET', '/api/me'). */
  api(method, path, body) { return this._http(method, path, body); }

  async me() { return (await this._http('GET', '/api/me')).user; }
  async searchUsers(q, { limit = 20 } = {}) {
    const p = new URLSearchParams({ q: q || '', limit: String(limit) });
    return (await this._http('GET', `/api/users?${p}`)).users;
  }
  async conversations() { return (await this._http('GET', '/api/conversations')).conversations; }
  conversation(id) { return this._http('GET', `/api/conversations/${id}`); }
  createDirect(userId) { return this._http('POST', '/api/conversations', { kind: 'direct', user_id: userId }); }
  createGroup(title, memberIds = []) {
    return this._http('POST', '/api/conversations', { kind: 'group', title, members: memberIds });
  }
  addMember(conv, userId) { return this._http('POST', `/api/conversations/${conv}/members`, { user_id: userId }); }
  removeMember(conv, userId) { return this._http('DELETE', `/api/conversations/${conv}/members/${userId}`); }
  leave(conv) { return this.removeMember(conv, this.user.id); }
  /** One page of history: {messages, has_more}. With `before` (or nothing): newest first; with `after`: oldest first. */
  history(conv, { before, after, limit } = {}) {
    const p = new URLSearchParams();
    if (before !== undefined && before !== null) p.set('before', String(before));
    if (after !== undefined && after !== null) p.set('after', String(after));
    if (limit) p.set('limit', String(limit));
    const qs = p.toString();
    return this._http('GET', `/api/conversations/${conv}/messages${qs ? `?${qs}` : ''}`);
  }

  /** Changes after a mod, in mod order: {messages, last_mod}. */
  changes(conv, { afterMod = 0, limit } = {}) {
    const p = new URLSearchParams({ after_mod: String(afterMod) });
    if (limit) p.set('limit', String(limit));
    return this._http('GET', `/api/conversations/${conv}/changes?${p}`);
  }

  /**
   * Full-text search over your conversations (or one, with `conv`): {results, next}.
   * Results are newest first; pass `next` back as `before` for the following page.
   */
  search(q, { conv, limit, before } = {}) {
    const p = new URLSearchParams({ q: q || '' });
    if (conv !== undefined && conv !== null) p.set('conv', String(conv));
    if (limit) p.set('limit', String(limit));
    if (before !== undefined && before !== null) p.set('before', String(before));
    return this._http('GET', `/api/search?${p}`).then((r) => ({ results: (r && r.results) || [], next: r ? r.next ?? null : null }));
  }

  /** Every page of a search, one after the other: `for await (const page of client.searchPages(q))`. */
  async *searchPages(q, opts = {}) {
    let before = opts.before;
    for (;;) {
      const page = await this.search(q, { ...opts, before });
      yield page;
      if (!page.next) return;
      before = page.next;
    }
  }

  // ------------------------------------------------------------------ attachments
  /**
   * Upload a file as an attachment; resolves with {id, name, type, size}. `data` is a
   * Blob/File (browser) or an ArrayBuffer, typed array or Buffer. Progress comes to
   * `onProgress({loaded, total})` and as `upload_progress` events; `signal` aborts it
   * (the promise also has `.abort()`). In browsers the bytes go with XMLHttpRequest,
   * whose upload.onprogress reports them as they leave.
   */
  upload(data, { name, type, onProgress, signal } = {}) {
    const uid = `u${++this._uploadSeq}`;
    const fname = name || (data && data.name) || 'file';
    const ftype = type || (data && data.type) || 'application/octet-stream';
    const total = data ? (data.size ?? data.byteLength ?? 0) : 0;
    let abort = () => {};
    let aborted = false;
    const report = (loaded) => {
      const ev = { upload: uid, name: fname, loaded, total };
      if (onProgress) { try { onProgress(ev); } catch (e) { console.error(e); } }
      this._emit('upload_progress', ev);
    };
    const run = async () => {
      if (!this.session) throw new ParleyError('unauthorized', 'not logged in');
      if (!total) throw new ParleyError('bad_request', 'an attachment cannot be empty');
      if (total > this.options.maxUploadBytes) throw new ParleyError('too_large', `file is over ${this.options.maxUploadBytes} bytes`);
      const path = `/api/attachments?${new URLSearchParams({ name: fname })}`;
      report(0);
      let res;
      if (this._XHR) {
        res = await this._xhrUpload(path, data, ftype, report, (fn) => { abort = fn; }, () => aborted);
      } else {
        const ctl = typeof AbortController !== 'undefined' ? new AbortController() : null;
        abort = () => ctl && ctl.abort();
        const r = await this._authFetch('POST', path, { body: data, headers: { 'content-type': ftype }, signal: ctl ? ctl.signal : undefined });
        res = await r.json();
      }
      report(total);
      return res.attachment;
    };
    const promise = run();
    promise.upload = uid;
    promise.abort = () => { aborted = true; abort(); };
    if (signal) {
      if (signal.aborted) promise.abort();
      else signal.addEventListener('abort', () => promise.abort(), { once: true });
    }
    return promise;
  }

  async _xhrUpload(path, data, type, report, setAbort, isAborted, retry = true) {
    if (isAborted()) throw new ParleyError('cancelled', 'upload aborted');
    const token = await this.accessToken();
    const r = await new Promise((resolve, reject) => {
      const xhr = new this._XHR();
      xhr.open('POST', this.baseUrl + path);
      xhr.setRequestHeader('authorization', `Bearer ${token}`);
      xhr.setRequestHeader('content-type', type);
      xhr.upload.onprogress = (ev) => { if (ev.lengthComputable) report(ev.loaded); };
      xhr.onload = () => resolve({ status: xhr.status, text: xhr.responseText });
      xhr.onerror = () => reject(new ParleyError('network', 'network error during upload', { status: 0 }));
      xhr.onabort = () => reject(new ParleyError('cancelled', 'upload aborted'));
      setAbort(() => xhr.abort());
      xhr.send(data);
    });
    if (r.status === 401 && retry && this.session) {
      if (this.session.access_token === token) {
        try { await this.refresh(); } catch { /* _endSession ran if refused */ }
      }
      if (this.session) return this._xhrUpload(path, data, type, report, setAbort, isAborted, false);
    }
    let body = null;
    try { body = JSON.parse(r.text); } catch { body = null; }
    if (r.status < 200 || r.status >= 300) {
      const err = body && body.error ? body.error : {};
      throw new ParleyError(err.code || CODE_OF_STATUS[r.status] || 'internal', err.message || `HTTP ${r.status}`, { status: r.status });
    }
    return body;
  }

  /**
   * The URL of an attachment's bytes. It needs the access token in an Authorization
   * header (`fetchAttachment`, `attachmentBlob`, `objectUrl` send it), so it does not
   * work as a bare <img src>.
   */
  attachmentUrl(id) { return `${this.baseUrl}/api/attachments/${encodeURIComponent(id)}`; }

  /** The Response for an attachment, with the token; `range` e.g. 'bytes=0-99' (206). */
  fetchAttachment(id, { range, signal } = {}) {
    const headers = {};
    if (range) headers.range = range;
    return this._authFetch('GET', `/api/attachments/${encodeURIComponent(id)}`, { headers, signal });
  }

  /** An attachment's bytes as a Blob (typed as stored). */
  async attachmentBlob(id, opts) { return (await this.fetchAttachment(id, opts)).blob(); }

  /** A blob: URL of the attachment for <img src> or a link (browser; revoke it when done). */
  async objectUrl(id) { return URL.createObjectURL(await this.attachmentBlob(id)); }

  /** Save an attachment as a file (browser): fetched with the token, then offered as a download. */
  async download(att) {
    const a0 = typeof att === 'string' ? { id: att } : att;
    if (!globalThis.document) throw new ParleyError('internal', 'download() needs a browser page: use attachmentBlob()');
    const url = await this.objectUrl(a0.id);
    const a = globalThis.document.createElement('a');
    a.href = url;
    a.download = a0.name || 'download';
    a.rel = 'noopener';
    globalThis.document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    return url;
  }

  // ------------------------------------------------------------------ connection
  /** Open the socket (and keep it open) while logged in. */
  connect() {
    this._wanted = true;
    if (!this._conn && !this._timers.reconnect) this._open();
  }

  /** Close the socket and stop reconnecting (the session is kept). */
  disconnect() {
    this._wanted = false;
    clearTimeout(this._timers.reconnect);
    this._timers.reconnect = null;
    this._drop('client closed', 1000);
    this._setState('offline');
  }

  /** Drop the current socket and reconnect at once (e.g. after a network change). */
  reconnectNow() {
    if (!this._wanted || !this.session) return;
    this._attempt = 0;
    clearTimeout(this._timers.reconnect);
    this._timers.reconnect = null;
    if (this._conn && this._conn.authed) return;
    this._drop('reconnect now');
    this._open();
  }

  _setState(s) {
    if (this.state === s) return;
    const previous = this.state;
    this.state = s;
    this._emit('state', s, previous);
  }

  async _open() {
    if (!this._wanted || !this.session || this._conn) return;
    this._setState(this._browserOffline ? 'offline' : this._everOnline ? 'reconnecting' : 'connecting');
    const gen = ++this._gen;
    const conn = { ws: null, gen, authed: false, lastRx: Date.now(), opening: true };
    this._conn = conn;
    try {
      await this.accessToken(this._margin(0.2, 10000));
    } catch (e) {
      if (this._conn !== conn) return;
      this._conn = null;
      if (!this.session) return; // logged out
      this._scheduleReconnect();
      return;
    }
    if (this._conn !== conn || !this._wanted) return;
    if (!this._WS) {
      this._conn = null;
      this._wanted = false;
      this._setState('offline');
      this._emit('error', new ParleyError('internal', 'no WebSocket implementation: pass options.WebSocket'));
      return;
    }
    let ws;
    try { ws = new this._WS(this.wsUrl); } catch (e) {
      this._conn = null;
      this._scheduleReconnect();
      return;
    }
    conn.ws = ws;
    conn.opening = false;
    ws.onopen = () => {
      if (this._conn !== conn) return;
      conn.lastRx = Date.now();
      this._sendFrame({ op: 'auth', token: this.session.access_token });
    };
    ws.onmessage = (ev) => {
      if (this._conn !== conn) return;
      let data = ev.data;
      if (typeof data !== 'string') {
        try { data = new TextDecoder().decode(data); } catch { data = String(data); }
      }
      let f;
      try { f = JSON.parse(data); } catch { return; }
      if (f && typeof f === 'object') this._onFrame(conn, f);
    };
    ws.onerror = () => {};
    ws.onclose = (ev) => {
      if (this._conn !== conn) return;
      this._onClosed(conn, ev.code, ev.reason);
    };
    clearTimeout(this._timers.connect);
    this._timers.connect = setTimeout(() => {
      if (this._conn === conn && !conn.authed) this._lost(conn, 'connect timeout');
    }, this.options.connectTimeoutMs);
  }

  // Forget the current socket without waiting for its close handshake.
  _drop(reason, code = 4000) {
    const conn = this._conn;
    this._conn = null;
    this._stopTimers();
    this._sync.inFlight = false;
    if (!conn) return null;
    if (conn.ws) {
      const ws = conn.ws;
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.onerror = () => {};
      try { ws.close(code, reason); } catch { /* already closed */ }
    }
    if (conn.authed) this._emit('disconnected', { reason });
    return conn;
  }

  _stopTimers() {
    clearTimeout(this._timers.connect);
    clearInterval(this._timers.ping);
    clearTimeout(this._timers.expect);
    clearTimeout(this._timers.stable);
    this._timers.connect = this._timers.ping = this._timers.expect = this._timers.stable = null;
  }

  // The connection is dead (timeout, browser offline): drop it and reconnect.
  _lost(conn, reason) {
    if (this._conn !== conn) return;
    this._drop(reason);
    this._afterClose(0, reason);
  }

  _onClosed(conn, code, reason) {
    this._conn = null;
    this._stopTimers();
    this._sync.inFlight = false;
    if (conn.authed) this._emit('disconnected', { code, reason });
    if (code === 4001 && this.session && this._attempt < 2) {
      // token missing/invalid/expired: refresh, then reconnect at once
      this._attempt++;
      const p = this._refreshing || this.refresh();
      p.then(() => { if (this._wanted && !this._conn && !this._timers.reconnect) this._open(); },
        () => { if (this.session) this._afterClose(code, reason); });
      if (this._wanted) this._setState('reconnecting');
      return;
    }
    this._afterClose(code, reason);
  }

  _afterClose() {
    if (!this._wanted || !this.session) { this._setState('offline'); return; }
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    if (!this._wanted || !this.session) return;
    clearTimeout(this._timers.reconnect);
    const r = this.options.reconnect;
    const ceiling = Math.min(r.maxMs, r.initialMs * r.factor ** this._attempt);
    const delay = this._browserOffline ? r.maxMs : ceiling / 2 + Math.random() * (ceiling / 2);
    this._attempt++;
    this._setState(this._browserOffline ? 'offline' : 'reconnecting');
    this._timers.reconnect = setTimeout(() => { this._timers.reconnect = null; this._open(); }, delay);
    this._emit('reconnect_scheduled', { delay, attempt: this._attempt });
  }

  _sendFrame(f) {
    const c = this._conn;
    if (!c || !c.ws || c.ws.readyState !== OPEN) return false;
    try { c.ws.send(JSON.stringify(f)); } catch { return false; }
    if (EXPECTS_ANSWER.has(f.op)) this._expect();
    return true;
  }

  // Something should come back soon. If nothing at all does, probe with a ping
  // (answered at once by a live server, however busy its writer); if that gets no
  // answer either, the socket is dead.
  _expect() {
    if (this._timers.expect || !this.options.pingTimeoutMs) return;
    const conn = this._conn;
    if (!conn) return;
    const arm = () => {
      this._timers.expect = setTimeout(() => {
        this._timers.expect = null;
        if (this._conn !== conn) return;
        if (conn.probing) { this._lost(conn, 'timeout'); return; }
        conn.probing = true;
        try { conn.ws.send(JSON.stringify({ op: 'ping' })); } catch { /* closing */ }
        arm();
      }, this.options.pingTimeoutMs);
    };
    arm();
  }

  _startPing(conn) {
    clearInterval(this._timers.ping);
    const every = this.options.pingIntervalMs;
    if (!every) return;
    this._timers.ping = setInterval(() => {
      if (this._conn !== conn) return;
      if (Date.now() - conn.lastRx >= every) this._sendFrame({ op: 'ping' });
    }, Math.max(250, every / 3));
  }

  // ------------------------------------------------------------------ frames
  _onFrame(conn, f) {
    conn.lastRx = Date.now();
    conn.probing = false;
    clearTimeout(this._timers.expect);
    this._timers.expect = null;
    switch (f.op) {
      case 'hello': return this._onHello(conn, f);
      case 'msg': return this._onMsg(f);
      case 'update': return this._onUpdate(f);
      case 'ack': return this._onAck(f);
      case 'synced': return this._onSynced(f);
      case 'presence': {
        if (f.online) this._online.add(f.user); else this._online.delete(f.user);
        return this._emit('presence', { user: f.user, online: !!f.online });
      }
      case 'typing': return this._emit('typing', { conv: f.conv, user: f.user });
      case 'read': return this._emit('read', { conv: f.conv, user: f.user, seq: f.seq });
      case 'conversation': return this._onConversation(f.conversation);
      case 'error': return this._onError(f);
      case 'pong': return undefined;
      default: return this._emit('frame', f);
    }
  }

  _onHello(conn, f) {
    if (f.user) this.user = f.user;
    if (conn.authed) { this._emit('reauth', f.user); return; } // token extended
    conn.authed = true;
    conn.heartbeatMs = f.heartbeat_ms;
    clearTimeout(this._timers.connect);
    // the backoff starts over once a connection has stayed up for a while
    clearTimeout(this._timers.stable);
    this._timers.stable = setTimeout(() => { if (this._conn === conn) this._attempt = 0; }, 5000);
    this._everOnline = true;
    this._presenceBefore = new Set(this._online);
    this._online.clear();
    this._sync.stuck = 0;
    this._sync.total = -1;
    this._startPing(conn);
    this._setState('online');
    this._emit('connected', { user: this.user, heartbeat_ms: f.heartbeat_ms });
    this._requestSync();
    for (const e of this._outbox.values()) this._transmit(e);
    // Changes in flight when the socket dropped go again: each is idempotent in effect.
    for (const o of this._ops.values()) this._sendFrame(o.frame);
    for (const [conv, seq] of this._reads) {
      if ((this._readsSent.get(conv) || 0) < seq) this._sendRead(conv, seq);
    }
  }

  _onConversation(c) {
    if (!c || typeof c.id !== 'number') return;
    const me = this.user && this.user.id;
    const member = Array.isArray(c.members) && c.members.some((m) => m.id === me);
    if (!member) {
      this._cursors.delete(c.id);
      this._buffers.delete(c.id);
      this._forgetMods(c.id);
      this._emit('conversation', c);
      this._emit('removed', { conv: c.id, conversation: c });
      return;
    }
    const isNew = !this._cursors.has(c.id);
    if (isNew) this._cursors.set(c.id, c.last_seq || 0);
    if (!this._mods.has(c.id) && typeof c.last_mod === 'number') this._mods.set(c.id, c.last_mod);
    this._emit('conversation', c);
    // The server reports presence of contacts at connect time and on changes only:
    // ask about people we just started sharing a conversation with.
    if (isNew) this._seedPresence(c.members.filter((m) => m.id !== me && !this._online.has(m.id)));
  }

  async _seedPresence(members) {
    for (const m of members.slice(0, 20)) {
      try {
        const found = (await this.searchUsers(m.username, { limit: 5 })).find((u) => u.id === m.id);
        if (found && found.online && !this._online.has(m.id)) {
          this._online.add(m.id);
          this._emit('presence', { user: m.id, online: true });
        }
      } catch { return; }
    }
  }

  _onMsg(m) {
    if (typeof m.conv !== 'number' || typeof m.seq !== 'number') return;
    let cur = this._cursors.get(m.conv);
    if (cur === undefined) {
      // First word of a conversation we did not know: older messages are history.
      cur = m.seq - 1;
      this._cursors.set(m.conv, cur);
    }
    if (m.seq <= cur) return; // duplicate
    if (m.seq === cur + 1) {
      this._deliver(m);
      this._drain(m.conv);
      return;
    }
    // a gap: hold this one, fetch what is missing first
    let buf = this._buffers.get(m.conv);
    if (!buf) this._buffers.set(m.conv, (buf = new Map()));
    if (!buf.has(m.seq)) buf.set(m.seq, m);
    this._emit('gap', { conv: m.conv, have: cur, got: m.seq });
    this._requestSync();
  }

  _drain(conv) {
    const buf = this._buffers.get(conv);
    if (!buf) return;
    for (;;) {
      const cur = this._cursors.get(conv);
      for (const s of buf.keys()) if (s <= cur) buf.delete(s);
      const next = buf.get(cur + 1);
      if (!next) break;
      buf.delete(cur + 1);
      this._deliver(next);
    }
    if (!buf.size) this._buffers.delete(conv);
  }

  _deliver(m) {
    this._cursors.set(m.conv, m.seq);
    const msg = normalizeMessage(m);
    if (typeof m.mod === 'number' && m.mod > 0) this._seenMod(m.conv, m.seq, m.mod);
    if (this.user && m.from === this.user.id) {
      const e = this._outbox.get(m.id);
      if (e) this._settle(e, { id: m.id, conv: m.conv, seq: m.seq, ts: m.ts });
      if ((this._reads.get(m.conv) || 0) < m.seq) this._reads.set(m.conv, m.seq);
      if ((this._readsSent.get(m.conv) || 0) < m.seq) this._readsSent.set(m.conv, m.seq);
    }
    this._emit('message', msg);
  }

  // ------------------------------------------------------------------ changes (mods)
  // An update frame: the whole message as it now is, after the change numbered `mod`.
  _onUpdate(f) {
    if (typeof f.conv !== 'number' || typeof f.seq !== 'number' || typeof f.mod !== 'number' || !f.message) return;
    if (this._sync.inFlight) {
      const u = this._sync.updates.get(f.conv) || { n: 0, last: 0 };
      u.n++;
      u.last = Math.max(u.last, f.mod);
      this._sync.updates.set(f.conv, u);
    }
    const fresh = this._seenMod(f.conv, f.seq, f.mod);
    this._noteMod(f.conv, f.mod);
    if (!fresh) return; // a state we already handed over, or an older one
    const message = normalizeMessage(f.message, f.conv, f.seq);
    if (message.mod === undefined) message.mod = f.mod;
    this._emit('update', { conv: f.conv, seq: f.seq, mod: f.mod, message });
  }

  // Record that the app holds message (conv, seq) as of `mod`; false if it held a newer one.
  _seenMod(conv, seq, mod) {
    let per = this._msgMods.get(conv);
    if (!per) this._msgMods.set(conv, (per = new Map()));
    if ((per.get(seq) || 0) >= mod) return false;
    per.set(seq, mod);
    return true;
  }

  // Move the conversation's mod cursor: live updates come densely, so a mod that skips
  // ahead means changes were missed, and a sync with `mods` fetches them.
  _noteMod(conv, mod) {
    const cur = this._mods.get(conv);
    if (cur === undefined) { this._mods.set(conv, mod); return; }
    if (mod <= cur) return;
    let above = this._modsAbove.get(conv);
    if (!above) this._modsAbove.set(conv, (above = new Set()));
    above.add(mod);
    let c = cur;
    while (above.has(c + 1)) { above.delete(c + 1); c++; }
    this._mods.set(conv, c);
    if (!above.size) this._modsAbove.delete(conv);
    else if (!this._sync.inFlight) { this._emit('gap', { conv, haveMod: c, gotMod: mod }); this._requestSync(); }
  }

  _forgetMods(conv) {
    this._mods.delete(conv);
    this._modsAbove.delete(conv);
    this._msgMods.delete(conv);
  }

  /** The highest mod up to which every change of a conversation is held (undefined if unknown). */
  modCursor(conv) { return this._mods.get(conv); }

  _op(frame, http) {
    if (!this.session) return Promise.reject(new ParleyError('unauthorized', 'not logged in'));
    // Over the socket when it is up (the ack carries the mod); otherwise over HTTP.
    if (!(this._conn && this._conn.authed)) {
      return http().then((r) => {
        const m = r && r.message ? normalizeMessage(r.message, frame.conv, frame.seq) : null;
        return { conv: frame.conv, seq: frame.seq, mod: m ? m.mod : undefined, message: m };
      });
    }
    const id = `${frame.op[0]}${++this._opSeq}.${newClientId().slice(0, 8)}`;
    const f = { ...frame, id };
    return new Promise((resolve, reject) => {
      this._ops.set(id, { frame: f, resolve, reject });
      this._sendFrame(f);
    });
  }

  /** Edit one of your messages. Resolves with {conv, seq, mod}. */
  edit(conv, seq, body) {
    if (typeof body !== 'string' || !body.length) return Promise.reject(new ParleyError('bad_request', 'body must be a non-empty string'));
    if (utf8Length(body) > this.options.maxBodyBytes) return Promise.reject(new ParleyError('too_large', `body is over ${this.options.maxBodyBytes} bytes`));
    return this._op({ op: 'edit', conv, seq, body },
      () => this._http('PATCH', `/api/conversations/${conv}/messages/${seq}`, { body }));
  }

  /** Delete a message (yours; or anyone's in a group you own or administer). Resolves with {conv, seq, mod}. */
  deleteMessage(conv, seq) {
    return this._op({ op: 'delete', conv, seq },
      () => this._http('DELETE', `/api/conversations/${conv}/messages/${seq}`));
  }

  /** Add (on = true) or remove (on = false) your reaction. Resolves with {conv, seq, mod}. */
  react(conv, seq, emoji, on = true) {
    if (typeof emoji !== 'string' || !emoji.length) return Promise.reject(new ParleyError('bad_request', 'emoji must be a non-empty string'));
    const path = `/api/conversations/${conv}/messages/${seq}/reactions/${encodeURIComponent(emoji)}`;
    return this._op({ op: 'react', conv, seq, emoji, on: !!on }, () => this._http(on ? 'PUT' : 'DELETE', path));
  }

  /** Remove your reaction. */
  unreact(conv, seq, emoji) { return this.react(conv, seq, emoji, false); }

  _onAck(f) {
    const o = this._ops.get(f.id);
    if (o) {
      this._ops.delete(f.id);
      o.resolve({ conv: f.conv, seq: f.seq, mod: f.mod });
      return;
    }
    const e = this._outbox.get(f.id);
    if (!e) return;
    this._settle(e, { id: f.id, conv: f.conv, seq: f.seq, ts: f.ts });
  }

  _settle(e, ack) {
    if (!this._outbox.has(e.id)) return;
    this._outbox.delete(e.id);
    this._unpersist(e);
    clearTimeout(e.retryTimer);
    e.resolve(ack);
    this._emit('ack', ack);
  }

  _onError(f) {
    const o = f.id !== undefined ? this._ops.get(f.id) : null;
    if (o) {
      this._ops.delete(f.id);
      o.reject(new ParleyError(f.code, f.message, { id: f.id }));
      return;
    }
    const e = f.id !== undefined ? this._outbox.get(f.id) : null;
    if (!e) { this._emit('error', new ParleyError(f.code, f.message)); return; }
    if (RETRYABLE_SEND_ERRORS.has(f.code) && e.errors < 8) {
      e.errors++;
      clearTimeout(e.retryTimer);
      const delay = Math.min(10000, 250 * 2 ** e.errors) * (0.5 + Math.random() / 2);
      e.retryTimer = setTimeout(() => this._transmit(e), delay);
      return;
    }
    this._outbox.delete(e.id);
    this._unpersist(e);
    const err = new ParleyError(f.code, f.message, { id: e.id });
    e.reject(err);
    this._emit('send_failed', { id: e.id, conv: e.conv, body: e.body, error: err });
  }

  // ------------------------------------------------------------------ sync
  _requestSync() {
    if (!this._conn || !this._conn.authed) return;
    if (this._sync.inFlight) { this._sync.again = true; return; }
    this._sync.inFlight = true;
    this._sync.again = false;
    const since = {};
    for (const [conv, seq] of this._cursors) since[String(conv)] = seq;
    const frame = { op: 'sync', since };
    if (this._mods.size) {
      frame.mods = {};
      for (const [conv, mod] of this._mods) frame.mods[String(conv)] = mod;
    }
    this._sync.asked = new Set(this._cursors.keys());
    this._sync.updates = new Map();
    if (!this._sendFrame(frame)) this._sync.inFlight = false;
  }

  _onSynced(f) {
    this._sync.inFlight = false;
    const list = Array.isArray(f.conversations) ? f.conversations : [];
    const mine = new Set();
    let behind = false;
    for (const c of list) {
      mine.add(c.conv);
      if (!this._cursors.has(c.conv)) this._cursors.set(c.conv, c.last_seq); // history, not held
      this._drain(c.conv);
      if (this._cursors.get(c.conv) < c.last_seq) behind = true;
      if (this._buffers.has(c.conv)) behind = true;
      if (typeof c.last_mod === 'number' && this._syncedMods(c.conv, c.last_mod)) behind = true;
    }
    // Gone from the list: we were removed while away. Only for conversations we asked
    // about: one we learned of meanwhile may be newer than the server's snapshot.
    const asked = this._sync.asked || new Set();
    for (const conv of [...this._cursors.keys()]) {
      if (!mine.has(conv) && asked.has(conv)) {
        this._cursors.delete(conv);
        this._buffers.delete(conv);
        this._forgetMods(conv);
        this._emit('removed', { conv });
      }
    }
    if (this._presenceBefore) {
      for (const u of this._presenceBefore) {
        if (!this._online.has(u)) this._emit('presence', { user: u, online: false });
      }
      this._presenceBefore = null;
    }
    this._emit('synced', { conversations: list });
    let total = 0;
    for (const v of this._cursors.values()) total += v;
    for (const v of this._mods.values()) total += v;
    const progressed = total !== this._sync.total;
    this._sync.total = total;
    if (!behind && !this._sync.again) { this._sync.stuck = 0; return; }
    this._sync.stuck = progressed ? 0 : this._sync.stuck + 1;
    if (this._sync.stuck >= 3) {
      // The server cannot fill a gap (it should never happen): deliver what we hold.
      this._sync.stuck = 0;
      for (const [conv, buf] of this._buffers) {
        const first = Math.min(...buf.keys());
        this._emit('error', new ParleyError('gap', `conversation ${conv}: seqs before ${first} could not be fetched`));
        this._cursors.set(conv, first - 1);
        this._drain(conv);
      }
      return;
    }
    this._requestSync();
  }

  // After a sync answer: the update frames it held were every change after the mod we
  // asked from, up to the conversation's last_mod, unless it stopped at its limit (then
  // the cursor moved as far as the frames went, and we ask again). True: still behind.
  _syncedMods(conv, lastMod) {
    if (!this._mods.has(conv)) { this._mods.set(conv, lastMod); return false; } // history, not held
    const u = this._sync.updates.get(conv) || { n: 0, last: 0 };
    const cur = this._mods.get(conv);
    const reached = u.n >= SYNC_UPDATES_MAX ? u.last : lastMod;
    if (reached > cur) this._mods.set(conv, reached);
    const now = this._mods.get(conv);
    const above = this._modsAbove.get(conv);
    if (above) {
      for (const m of above) if (m <= now) above.delete(m);
      if (!above.size) this._modsAbove.delete(conv);
    }
    return now < lastMod;
  }

  /** The highest seq of a conversation delivered in order (undefined if unknown). */
  cursor(conv) { return this._cursors.get(conv); }

  /** Ask the server for anything missed (normally automatic). */
  sync() { this._requestSync(); }

  // ------------------------------------------------------------------ sending
  /**
   * Send a message. Resolves with the ack {id, conv, seq, ts}; rejects with a
   * ParleyError for a refused message. The returned promise carries the client id
   * as `.id`. Unacked sends are retried after every reconnect with the same id, and
   * (in a browser) kept in IndexedDB until acked, so they survive a closed tab.
   * Options: `replyTo` (seq of a message of the same conversation), `attachments`
   * (attachments from `upload()`, or their ids; at most 10; `body` may then be '').
   */
  send(conv, body, { id, replyTo, attachments } = {}) {
    if (id && this._outbox.has(id)) return this._outbox.get(id).promise;
    const cid = id || newClientId();
    let resolve, reject;
    const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
    promise.id = cid;
    if (!this.session) { reject(new ParleyError('unauthorized', 'not logged in', { id: cid })); return promise; }
    const atts = (attachments || []).map((a) => (typeof a === 'string' ? { id: a } : { id: a.id, name: a.name, type: a.type, size: a.size }));
    if (typeof body !== 'string' || (body.length === 0 && !atts.length)) {
      reject(new ParleyError('bad_request', 'body must be a non-empty string', { id: cid }));
      return promise;
    }
    if (atts.length > 10 || atts.some((a) => typeof a.id !== 'string' || !a.id)) {
      reject(new ParleyError('bad_request', 'at most 10 attachments, each with an id', { id: cid }));
      return promise;
    }
    if (utf8Length(body) > this.options.maxBodyBytes) {
      reject(new ParleyError('too_large', `body is over ${this.options.maxBodyBytes} bytes`, { id: cid }));
      return promise;
    }
    const e = this._entry({ id: cid, conv, body, from: this.user && this.user.id, created: Date.now() }, promise, resolve, reject);
    if (replyTo !== undefined && replyTo !== null) e.reply_to = replyTo;
    if (atts.length) e.attachments = atts;
    this._outbox.set(cid, e);
    this._persist(e);
    this._emit('sending', this._pendingView(e));
    this._transmit(e);
    return promise;
  }

  _entry(rec, promise, resolve, reject) {
    return { ...rec, attempts: 0, errors: 0, promise, resolve, reject, retryTimer: null };
  }

  _pendingView(e) {
    const p = { id: e.id, conv: e.conv, body: e.body, from: e.from, created: e.created, attempts: e.attempts };
    if (e.reply_to !== undefined) p.reply_to = e.reply_to;
    if (e.attachments) p.attachments = e.attachments;
    if (e.restored) p.restored = true;
    return p;
  }

  _transmit(e) {
    if (!this._outbox.has(e.id)) return;
    const c = this._conn;
    if (!c || !c.authed) return; // flushed on the next hello
    const f = { op: 'send', id: e.id, conv: e.conv, body: e.body };
    if (e.reply_to !== undefined) f.reply_to = e.reply_to;
    if (e.attachments) f.attachments = e.attachments.map((a) => a.id);
    if (this._sendFrame(f)) e.attempts++;
  }

  // ------------------------------------------------------------------ offline outbox
  _persist(e) {
    if (!this._idb || e.from === undefined || e.from === null) return;
    const rec = { id: e.id, user: e.from, conv: e.conv, body: e.body, created: e.created };
    if (e.reply_to !== undefined) rec.reply_to = e.reply_to;
    if (e.attachments) rec.attachments = e.attachments;
    this._idb.put(rec).catch((err) => this._emit('error', new ParleyError('storage', `outbox: ${err && err.message}`)));
  }

  _unpersist(e) {
    if (this._idb) this._idb.del(e.id).catch(() => {});
  }

  // Messages a closed tab left unsent: back into the outbox with their client ids, so the
  // server's (sender, client id) idempotency makes a resend of one it did get harmless.
  _loadOutbox() {
    if (!this._idb || !this.user) return Promise.resolve(0);
    const uid = this.user.id;
    const p = this._idb.all().then((recs) => {
      if (!this.user || this.user.id !== uid) return 0;
      let n = 0;
      for (const r of (recs || []).filter((x) => x.user === uid).sort((a, b) => a.created - b.created)) {
        if (this._outbox.has(r.id)) continue;
        let resolve, reject;
        const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
        promise.id = r.id;
        promise.catch(() => {}); // nobody awaits a restored send: the events tell the app
        const e = this._entry({ id: r.id, conv: r.conv, body: r.body, from: uid, created: r.created, restored: true }, promise, resolve, reject);
        if (r.reply_to !== undefined) e.reply_to = r.reply_to;
        if (r.attachments) e.attachments = r.attachments;
        this._outbox.set(r.id, e);
        n++;
        this._emit('sending', this._pendingView(e));
        this._transmit(e);
      }
      return n;
    }).catch((err) => { this._emit('error', new ParleyError('storage', `outbox: ${err && err.message}`)); return 0; });
    this._outboxLoaded = p;
    return p;
  }

  /** Resolves once every unacked send so far is on disk (IndexedDB), and the stored ones are loaded. */
  async outboxSaved() {
    if (this._outboxLoaded) await this._outboxLoaded;
    if (this._idb) await this._idb.saved();
  }

  /** Messages sent but not acknowledged yet: [{id, conv, body, from, created, attempts, reply_to?, attachments?}]. */
  pending(conv) {
    const out = [];
    for (const e of this._outbox.values()) {
      if (conv === undefined || e.conv === conv) out.push(this._pendingView(e));
    }
    return out;
  }

  /** Give up on an unacked send (it may still have reached the server). */
  cancel(id) {
    const e = this._outbox.get(id);
    if (!e) return false;
    this._outbox.delete(id);
    this._unpersist(e);
    clearTimeout(e.retryTimer);
    e.reject(new ParleyError('cancelled', 'send cancelled', { id }));
    return true;
  }

  /** Tell the others you have read up to seq (moves forward only; sent when online). */
  markRead(conv, seq) {
    if (!(seq > (this._reads.get(conv) || 0))) return;
    this._reads.set(conv, seq);
    this._sendRead(conv, seq);
  }

  _sendRead(conv, seq) {
    if (this._conn && this._conn.authed && this._sendFrame({ op: 'read', conv, seq })) this._readsSent.set(conv, seq);
  }

  /** Tell the others you are typing (throttled). */
  typing(conv) {
    const now = Date.now();
    if (now - (this._typingAt.get(conv) || 0) < this.options.typingThrottleMs) return;
    if (this._conn && this._conn.authed && this._sendFrame({ op: 'typing', conv })) this._typingAt.set(conv, now);
  }

  /** Whether a user is currently reported online. */
  isOnline(userId) { return this._online.has(userId); }
  get onlineUsers() { return new Set(this._online); }

  // ------------------------------------------------------------------ browser hooks
  _installBrowserHooks() {
    const w = globalThis.window;
    if (!this._watch || !w || typeof w.addEventListener !== 'function') return;
    const nav = globalThis.navigator;
    this._browserOffline = !!(nav && nav.onLine === false);
    const add = (target, name, fn) => { target.addEventListener(name, fn); this._listeners.push([target, name, fn]); };
    add(w, 'offline', () => {
      this._browserOffline = true;
      // Chromium may keep an open socket alive while "offline": do not trust it.
      if (this._conn) { this._drop('browser offline'); this._afterClose(0, 'offline'); }
      this._setState('offline');
    });
    add(w, 'online', () => {
      this._browserOffline = false;
      this.reconnectNow();
      if (this._wanted && this.state === 'offline') this._setState('reconnecting');
    });
    const doc = globalThis.document;
    if (doc) {
      add(doc, 'visibilitychange', () => {
        if (doc.visibilityState !== 'visible' || !this.session) return;
        if (this.session.expires_at - Date.now() < 30000) this.refresh().catch(() => {});
        if (this._wanted && !this._conn) this.reconnectNow();
        else if (this._conn && this._conn.authed) this._sendFrame({ op: 'ping' });
      });
    }
    // Another tab logged out (or in as someone else): follow it.
    if (this._storage.key) {
      add(w, 'storage', (ev) => {
        if (ev.key !== this._storage.key || !this.session) return;
        const next = this._storage.get();
        if (!next || !next.user || next.user.id !== this.session.user.id) this._endSession('logged_out_elsewhere');
      });
    }
  }

  /** Stop everything: socket, timers, listeners. The stored session is kept. */
  destroy() {
    this.disconnect();
    clearTimeout(this._timers.refresh);
    for (const [t, n, fn] of this._listeners) t.removeEventListener(n, fn);
    this._listeners = [];
    this._handlers.clear();
  }
}

export default ParleyClient;
