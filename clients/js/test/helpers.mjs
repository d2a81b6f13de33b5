/**
 * What the package's tests share: the server and tokens from the
 * environment (set by `tests/browser.rs`, see clients/js/README.md), a
 * WebSocket that records what the client does with it, waiting helpers, and
 * the control endpoint through which the Rust side does what only it can
 * (SQL as the superuser, disabling an agent, restarting the server).
 */
import assert from 'node:assert/strict';
import { after } from 'node:test';
import { LivedeskClient } from '../livedesk-client.js';

/** The environment the Rust driver sets; a missing one fails the test that needs it. */
export function env(name) {
  const value = process.env[name];
  assert.ok(value, `${name} is not set: run these tests through \`cargo test --test browser -- --include-ignored\` (clients/js/README.md)`);
  return value;
}

export const BASE = () => env('LIVEDESK_URL');

/**
 * The WebSocket implementation: the global one where Node has it (>= 22),
 * else npm `ws` (a devDependency), passed through the client's `WebSocket`
 * option as an application on Node 20 would.
 */
const NativeWS = globalThis.WebSocket ?? (await import('ws')).WebSocket;
export const usingNativeWebSocket = Boolean(globalThis.WebSocket);

/**
 * A WebSocket constructor that records every connection the client opens
 * (time, URL) and the socket itself (`log.sockets`, to cut a connection),
 * every frame it sends and every close it sees, for the
 * assertions about resume, backoff and "never reconnects".
 */
export function recordingWebSocket() {
  const log = { opened: [], sent: [], closes: [], sockets: [] };
  class RecordingWebSocket extends NativeWS {
    constructor(url) {
      super(url);
      log.opened.push({ at: Date.now(), url: String(url) });
      log.sockets.push(this);
      this.addEventListener('close', (ev) => log.closes.push({ at: Date.now(), code: ev.code }));
    }
    send(data) {
      log.sent.push({ at: Date.now(), frame: JSON.parse(data) });
      return super.send(data);
    }
  }
  return { WebSocket: RecordingWebSocket, log };
}

/** Every client made here, disconnected when the file's tests are done (also after a failure). */
const made = new Set();
after(() => {
  for (const client of made) client.disconnect();
});

/** A client for `token` with a recording WebSocket; `client.log` holds the record. */
export function makeClient(token) {
  const { WebSocket, log } = recordingWebSocket();
  const client = new LivedeskClient({ baseUrl: BASE(), token, WebSocket });
  client.log = log;
  made.add(client);
  return client;
}

/** Poll `probe` until it returns a truthy value; that value. */
export async function waitFor(probe, what, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolve with the arguments of the next `name` event of `client`. */
export function nextEmit(client, name, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no "${name}" event within ${timeoutMs} ms`));
    }, timeoutMs);
    const off = client.on(name, (...args) => {
      clearTimeout(timer);
      off();
      resolve(args);
    });
  });
}

/** Connect and wait until the connection is live. */
export async function connectLive(client) {
  const hello = nextEmit(client, 'hello');
  client.connect();
  const [frame] = await hello;
  assert.equal(client.state, 'live');
  return frame;
}

/**
 * Ask the Rust side to do something (POST <control>/<action>?<params>);
 * its JSON answer. Actions: `hole` (a version without its event: the server
 * sends `reset`), `disable` (as `livedesk agent disable`), `restart`
 * (stop the server, optionally write with SQL while it is down, start it
 * again on the same address).
 */
export async function control(action, params = {}) {
  const url = new URL(action, env('LIVEDESK_CONTROL_URL') + '/');
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, String(v));
  const res = await fetch(url, { method: 'POST' });
  const text = await res.text();
  assert.equal(res.status, 200, `control ${action}: ${text}`);
  return JSON.parse(text);
}

/**
 * Collect a subscription's callbacks in order: `subscribe(client, id, opts)`
 * returns `{calls, events, snapshots, presence, resets}`, each entry as the
 * client delivered it.
 */
export function subscribeRecorded(client, id, opts) {
  const rec = { calls: [], events: [], snapshots: [], presence: [], resets: [], subscribed: [] };
  client.subscribe(
    id,
    {
      onSubscribed: (f) => {
        rec.calls.push('subscribed');
        rec.subscribed.push(f);
      },
      onSnapshot: (f) => {
        rec.calls.push('snapshot');
        rec.snapshots.push(f);
      },
      onEvent: (ev) => {
        rec.calls.push(`event ${ev.version}`);
        rec.events.push(ev);
      },
      onPresence: (viewers) => rec.presence.push(viewers),
      onReset: (f) => {
        rec.calls.push('reset');
        rec.resets.push(f);
      },
    },
    opts,
  );
  return rec;
}

/** The subscribe frames the client sent for a ticket. */
export function subscribeFrames(client, id) {
  return client.log.sent.map((s) => s.frame).filter((f) => f.type === 'subscribe' && f.ticket_id === id);
}

/** Versions must follow each other without a gap or a repeat. */
export function assertConsecutive(events, from) {
  assert.deepEqual(
    events.map((e) => e.version),
    events.map((_, i) => from + i),
    `versions ${events.map((e) => e.version).join(',')} are not ${from}, ${from + 1}, …`,
  );
}
