// Reconnect with backoff: the server goes away for a few seconds (stopped by
// the Rust side, a direct SQL write made meanwhile, started again on the
// same address). The client retries at growing, jittered intervals
// (0.25–0.5 s, 0.5–1 s, 1–2 s, 2–4 s …), comes back live and resumes with
// `since`: the change made while it was away arrives once, no snapshot.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LivedeskClient } from '../livedesk-client.js';
import {
  BASE, env, makeClient, connectLive, waitFor, subscribeRecorded, subscribeFrames, control, assertConsecutive,
} from './helpers.mjs';

test('server restart: backoff between attempts, live again, resume with since', async () => {
  const a = new LivedeskClient({ baseUrl: BASE(), token: env('LIVEDESK_TOKEN_A') });
  const d = makeClient(env('LIVEDESK_TOKEN_B'));
  await connectLive(d);
  const ticket = await a.createTicket({ subject: 'before the restart' });
  const rec = subscribeRecorded(d, ticket.id);
  await waitFor(() => rec.snapshots.length === 1, 'the snapshot');
  const states = [];
  d.on('state', (s) => states.push({ s, at: Date.now() }));

  const stoppedAt = Date.now();
  const answer = await control('restart', { down_ms: 4500, ticket: ticket.id, subject: 'while the server was down' });
  await waitFor(() => d.state === 'live', 'live again after the restart', 20000);
  await waitFor(() => rec.events.length === 1, 'the change made while down');
  await a.postMessage(ticket.id, { kind: 'note', body: 'after the restart' });
  await waitFor(() => rec.events.length === 2, 'a live event after the restart');

  // Events: the one written while the server was down, then the live one,
  // consecutive from the snapshot; no second snapshot.
  assertConsecutive(rec.events, ticket.version + 1);
  assert.equal(rec.events[0].data.changes.subject.to, 'while the server was down');
  assert.equal(rec.snapshots.length, 1);
  const frames = subscribeFrames(d, ticket.id);
  assert.equal(frames.at(-1).since, ticket.version, 'resumed with since = the last applied version');

  // The attempts: the first close came from the server going away; every
  // attempt while it was down failed; the waits between attempts grew.
  const opened = d.log.opened.map((o) => o.at);
  const firstClose = d.log.closes[0];
  assert.ok([1001, 1006].includes(firstClose.code), `closed with ${firstClose.code}`);
  assert.ok(firstClose.at >= stoppedAt);
  assert.ok(opened.length >= 4, `at least three failed attempts and one that worked: ${opened.length - 1} attempts`);
  const waits = [opened[1] - firstClose.at];
  for (let i = 2; i < opened.length; i++) waits.push(opened[i] - d.log.closes[i - 1].at);
  // Attempt n waits between half and all of 0.5 s × 2^n (n = 0, 1, …), capped at 30 s.
  waits.forEach((w, n) => {
    const exp = Math.min(30000, 500 * 2 ** n);
    assert.ok(w >= exp / 2 - 30 && w <= exp + 300, `wait ${n} was ${w} ms, expected ${exp / 2}–${exp} ms (${JSON.stringify(waits)})`);
  });
  for (let i = 2; i < waits.length; i++) assert.ok(waits[i] > waits[i - 2], `waits grow: ${JSON.stringify(waits)}`);
  assert.ok(d.log.closes.every((c) => c.code !== 4001));
  assert.ok(states.some((x) => x.s === 'reconnecting'));
  assert.equal(states.at(-1).s, 'live');
  assert.ok(answer.up_at_ms > 0);
  d.disconnect();
});
