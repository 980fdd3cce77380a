// Helpers for the SDK tests: the SDK in Node, with `ws` standing in for the
// browser WebSocket, against a real server started by the shared harness.
import { before, after } from 'node:test';
import WS from 'ws';
import { ParleyClient } from '../../web/parley.js';
import { start } from '../lib/server.mjs';

export { ParleyClient };

let seq = 0;
export function uname(prefix = 'u') {
  return `${prefix}${process.pid.toString(36)}${Date.now().toString(36).slice(-4)}${(seq++).toString(36)}`;
}

// A WebSocket class whose traffic a test can watch and tamper with.
// hooks.incoming(frame, deliver) -> return true to swallow (deliver(raw) later if you like)
// hooks.outgoing(frame) -> return true to swallow
// Every instance is pushed to `sockets`; sock.kill() drops the TCP connection abruptly.
export function tapSocket(hooks = {}) {
  const sockets = [];
  const sent = [];
  const received = [];
  const closes = [];
  class TapSocket {
    constructor(url) {
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      sockets.push(this);
      if (hooks.refuse && hooks.refuse()) { // behave like an unreachable server
        this._ws = { readyState: 3, close() {}, terminate() {}, send() {} };
        setTimeout(() => this.onclose && this.onclose({ code: 1006, reason: '' }), 5);
        return;
      }
      this._ws = new WS(url);
      this._ws.on('open', () => this.onopen && this.onopen({}));
      this._ws.on('message', (data, isBinary) => {
        const raw = isBinary ? data : data.toString();
        let f = null;
        try { f = JSON.parse(raw); } catch { /* pass through */ }
        if (f) received.push(f);
        const deliver = (r = raw) => this.onmessage && this.onmessage({ data: r });
        if (f && hooks.incoming && hooks.incoming(f, deliver, this)) return;
        deliver();
      });
      this._ws.on('close', (code, reason) => {
        closes.push(code);
        if (this.onclose) this.onclose({ code, reason: String(reason) });
      });
      this._ws.on('error', (e) => this.onerror && this.onerror(e));
    }
    get readyState() { return this._ws.readyState; }
    send(data) {
      let f = null;
      try { f = JSON.parse(data); } catch { /* pass */ }
      if (f) sent.push(f);
      if (f && hooks.outgoing && hooks.outgoing(f, this)) return;
      this._ws.send(data);
    }
    close(code, reason) { this._ws.close(code, reason); }
    kill() { this._ws.terminate(); }
  }
  return { TapSocket, sockets, sent, received, closes };
}

export function client(srv, opts = {}) {
  return new ParleyClient({
    url: srv.url,
    WebSocket: WS,
    storage: false,
    reconnect: { initialMs: 100, maxMs: 1000 },
    ...opts,
  });
}

// Sign up a fresh user on a fresh client and wait for the socket to be online.
export async function signedUp(srv, opts = {}, prefix = 'u') {
  const c = client(srv, opts);
  const username = uname(prefix);
  await c.signup({ username, password: 'password-123' });
  await online(c);
  return c;
}

export function online(c, timeout = 10000) {
  return waitFor(() => c.state === 'online', timeout, 'client online');
}

export async function waitFor(pred, timeout = 10000, what = 'condition') {
  const until = Date.now() + timeout;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// Collect 'message' events: per conversation, the seqs in the order the app got them.
export function collect(c) {
  const all = [];
  c.on('message', (m) => all.push(m));
  return {
    all,
    seqs: (conv) => all.filter((m) => m.conv === conv).map((m) => m.seq),
    bodies: (conv) => all.filter((m) => m.conv === conv).map((m) => m.body),
  };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// One server for a test file, its clients destroyed at the end, and the pair most tests
// start from: two online users with a direct conversation both know about. Registers the
// file's before/after hooks; s.srv is the server once they ran.
export function suite(env = { PARLEY_SEND_BURST: '0' }) {
  const s = { srv: null, clients: [] };
  s.track = (c) => { s.clients.push(c); return c; };
  before(async () => { s.srv = await start({ env }); });
  after(async () => {
    for (const c of s.clients) c.destroy();
    if (s.srv) await s.srv.stop();
  });
  s.pair = async (optsA = {}, optsB = {}) => {
    const a = s.track(await signedUp(s.srv, optsA, 'a'));
    const b = s.track(await signedUp(s.srv, optsB, 'b'));
    const conv = await a.createDirect(b.user.id);
    await waitFor(() => a.cursor(conv.id) !== undefined && b.cursor(conv.id) !== undefined, 5000, 'conversation event');
    return { a, b, conv: conv.id };
  };
  return s;
}
