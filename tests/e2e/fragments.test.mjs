// Fragmented WebSocket messages, written as raw frames: the server keeps a message being
// reassembled only from its first fragment to its last (worker.c, struct ws_frag), and the
// bytes of a frame cut by a read only until the frame is whole (keep_input). These paths:
// control frames between fragments, a message written one byte per write, a second
// fragmented message after the first, protocol errors, a fragment over the frame limit, and a
// connection that goes away in the middle of a message (under the ASan build, a partial
// message or remainder left unfreed fails the server's stop with the leak report).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, signupMany, createGroup, getConv, openSocket, uniq } from './helpers.mjs';
import { rawWebSocket, wsFrame } from './abuse.mjs';
import { TIME_SCALE } from '../lib/server.mjs';

const OP_CONT = 0x0, OP_TEXT = 0x1, OP_CLOSE = 0x8, OP_PING = 0x9, OP_PONG = 0xa;

let srv;
before(async () => { srv = await startServer(); });
after(async () => { if (srv) await srv.stop(); });

// The server's frames on a raw WebSocket (unmasked), in order: {opcode, payload, json}.
class Frames {
  constructor(sock) {
    this.sock = sock;
    this.buf = Buffer.alloc(0);
    this.frames = [];
    this.waiters = [];
    this.ended = false;
    sock.on('data', (d) => { this.buf = Buffer.concat([this.buf, d]); this.parse(); });
    sock.on('close', () => { this.ended = true; this.wake(); });
    sock.resume();
  }

  parse() {
    for (;;) {
      if (this.buf.length < 2) break;
      let len = this.buf[1] & 0x7f, off = 2;
      if (len === 126) { if (this.buf.length < 4) break; len = this.buf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (this.buf.length < 10) break; len = Number(this.buf.readBigUInt64BE(2)); off = 10; }
      if (this.buf.length < off + len) break;
      const opcode = this.buf[0] & 0x0f;
      const payload = this.buf.subarray(off, off + len);
      let json = null;
      if (opcode === OP_TEXT) json = JSON.parse(payload.toString('utf8'));
      this.frames.push({ opcode, payload, json });
      this.buf = this.buf.subarray(off + len);
    }
    this.wake();
  }

  wake() { for (const w of this.waiters.splice(0)) w(); }

  // The first frame not taken yet that matches, taken; rejects when the connection closes or
  // after timeoutMs without one.
  async next(pred, what, timeoutMs = 5000) {
    const until = Date.now() + timeoutMs * TIME_SCALE;
    for (;;) {
      const i = this.frames.findIndex(pred);
      if (i >= 0) return this.frames.splice(i, 1)[0];
      if (this.ended) throw new Error(`closed before ${what}; frames: ${this.describe()}`);
      const left = until - Date.now();
      if (left <= 0) throw new Error(`no ${what} within ${timeoutMs * TIME_SCALE} ms; frames: ${this.describe()}`);
      await new Promise((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => { clearTimeout(t); resolve(); });
      });
    }
  }

  // The close frame's code and reason, once the server closed the connection.
  async closed(timeoutMs = 5000) {
    const f = await this.next((x) => x.opcode === OP_CLOSE, 'a close frame', timeoutMs);
    return [f.payload.readUInt16BE(0), f.payload.subarray(2).toString()];
  }

  describe() {
    return JSON.stringify(this.frames.map((f) => [f.opcode, f.payload.toString('utf8').slice(0, 80)])).slice(0, 800);
  }
}

const ackOf = (id) => (f) => f.json && (f.json.op === 'ack' || f.json.op === 'error') && f.json.id === id;
const pongOf = (text) => (f) => f.opcode === OP_PONG && f.payload.toString() === text;

// A send of `body` to conv as one JSON text split into n fragments (n >= 2).
function fragments(conv, id, body, n) {
  const text = Buffer.from(JSON.stringify({ op: 'send', id, conv, body }));
  const size = Math.ceil(text.length / n);
  const out = [];
  for (let i = 0; i < n; i++) {
    out.push(wsFrame(i === 0 ? OP_TEXT : OP_CONT, text.subarray(i * size, (i + 1) * size), { fin: i === n - 1 }));
  }
  return out;
}

// Writes buf one byte per write, each after the previous one went out: the server reads it
// in as many pieces as the kernel delivers, frames cut anywhere.
async function writeByBytes(sock, buf) {
  for (let i = 0; i < buf.length; i++) await new Promise((resolve) => sock.write(buf.subarray(i, i + 1), resolve));
}

async function setup(prefix) {
  const [u, o] = await signupMany(srv, 2, prefix);
  const g = await createGroup(srv, u, [o.user.id]);
  const sock = await rawWebSocket(srv.port, u.token);
  const frames = new Frames(sock);
  await frames.next((f) => f.json && f.json.op === 'hello', 'hello');
  return { u, g, sock, frames };
}

test('fragments: pings between the fragments are answered at once, and the message is reassembled', async () => {
  const { g, sock, frames } = await setup('fping');
  try {
    const id = uniq('fp');
    const [a, b, c] = fragments(g.id, id, 'in three parts, pinged between them', 3);
    sock.write(a);
    sock.write(wsFrame(OP_PING, 'between-1'));
    await frames.next(pongOf('between-1'), 'the pong to the first ping'); // answered with the message open
    sock.write(b);
    sock.write(wsFrame(OP_PING, 'between-2'));
    await frames.next(pongOf('between-2'), 'the pong to the second ping');
    sock.write(c);
    const ack = await frames.next(ackOf(id), 'the ack');
    assert.equal(ack.json.op, 'ack', JSON.stringify(ack.json));
    assert.equal(ack.json.seq, 1);

    // a second fragmented message on the same connection, written one byte per write (frames
    // and their headers cut by reads), a ping inside it too
    const id2 = uniq('fp');
    const [d, e] = fragments(g.id, id2, 'the second, byte by byte', 2);
    await writeByBytes(sock, Buffer.concat([d, wsFrame(OP_PING, 'between-3'), e]));
    await frames.next(pongOf('between-3'), 'the pong to the third ping');
    const ack2 = await frames.next(ackOf(id2), 'the second ack');
    assert.equal(ack2.json.op, 'ack', JSON.stringify(ack2.json));
    assert.equal(ack2.json.seq, 2);

    // and an unfragmented one after them: nothing of the fragments is left over
    const id3 = uniq('fp');
    sock.write(wsFrame(OP_TEXT, JSON.stringify({ op: 'send', id: id3, conv: g.id, body: 'whole' })));
    assert.equal((await frames.next(ackOf(id3), 'the third ack')).json.seq, 3);
  } finally { sock.destroy(); }
});

test('fragments: a text frame inside a fragmented message, or a continuation outside one, closes with 1002', async () => {
  const { u, g, sock, frames } = await setup('ferr');
  try {
    const [a] = fragments(g.id, uniq('fe'), 'never finished', 2);
    sock.write(a);
    sock.write(wsFrame(OP_TEXT, JSON.stringify({ op: 'ping' })));
    assert.deepEqual(await frames.closed(), [1002, 'expected a continuation frame']);
  } finally { sock.destroy(); }

  const s2 = await rawWebSocket(srv.port, u.token);
  const f2 = new Frames(s2);
  try {
    await f2.next((f) => f.json && f.json.op === 'hello', 'hello');
    s2.write(wsFrame(OP_CONT, 'no message open', { fin: true }));
    assert.deepEqual(await f2.closed(), [1002, 'unexpected continuation frame']);
  } finally { s2.destroy(); }
  assert.equal((await getConv(srv, u, g.id)).last_seq, 0, 'nothing was stored');
});

test('fragments: a continuation frame over 64 KiB closes with 1009 before its payload is read', async () => {
  const { u, g, sock, frames } = await setup('fbig');
  try {
    const [a] = fragments(g.id, uniq('fb'), 'small first part', 2);
    sock.write(a);
    const head = Buffer.alloc(14); // a masked continuation announcing 1 MiB, then nothing
    head[0] = OP_CONT; head[1] = 0x80 | 127; head.writeBigUInt64BE(1n << 20n, 2);
    sock.write(head);
    assert.deepEqual(await frames.closed(), [1009, 'frame too big']);
  } finally { sock.destroy(); }
  assert.equal((await getConv(srv, u, g.id)).last_seq, 0, 'nothing was stored');
});

test('fragments: a connection closed or cut in the middle of a message leaves the server serving', async () => {
  const { u, g, sock, frames } = await setup('fcut');
  try {
    // a close frame between the fragments: answered, the partial message dropped
    const [a] = fragments(g.id, uniq('fc'), 'cut short by a close', 3);
    sock.write(a);
    sock.write(wsFrame(OP_CLOSE, Buffer.from([0x03, 0xe8]))); // 1000
    assert.deepEqual(await frames.closed(), [1000, '']);
  } finally { sock.destroy(); }

  // the TCP connection dropped in the middle of a message (its first fragment read: the pong
  // after it came) and of a frame (half of the last fragment written)
  const s2 = await rawWebSocket(srv.port, u.token);
  const f2 = new Frames(s2);
  await f2.next((f) => f.json && f.json.op === 'hello', 'hello');
  const [b, c] = fragments(g.id, uniq('fc'), 'cut short by a reset', 2);
  s2.write(Buffer.concat([b, wsFrame(OP_PING, 'open')]));
  await f2.next(pongOf('open'), 'the pong after the first fragment');
  await new Promise((resolve) => s2.write(c.subarray(0, c.length >> 1), resolve));
  s2.destroy();

  // the server goes on: a new connection's message is stored as the first of the group
  const conn = await openSocket(srv, u.token);
  try {
    const ack = await conn.sendMsg(g.id, 'after the cut ones');
    assert.equal(ack.op, 'ack', JSON.stringify(ack));
    assert.equal(ack.seq, 1, 'neither partial message was stored');
  } finally { await conn.close(); }
});
