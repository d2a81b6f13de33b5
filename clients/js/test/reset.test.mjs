// `reset`: the server says the ticket's history went back or has a hole the
// client cannot cross. The client drops what it held (onReset), subscribes
// again without `since` and delivers the snapshot that follows.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LivedeskClient } from '../livedesk-client.js';
import {
  BASE, env, makeClient, connectLive, waitFor, subscribeRecorded, subscribeFrames, control, sleep, assertConsecutive,
} from './helpers.mjs';

test('reset frame from the server: onReset, one fresh subscribe without since, the snapshot, live again', async () => {
  const a = new LivedeskClient({ baseUrl: BASE(), token: env('LIVEDESK_TOKEN_A') });
  const b = makeClient(env('LIVEDESK_TOKEN_B'));
  await connectLive(b);
  const ticket = await a.createTicket({ subject: 'before the hole' });
  const rec = subscribeRecorded(b, ticket.id);
  await waitFor(() => rec.snapshots.length === 1, 'the snapshot');
  await a.postMessage(ticket.id, { kind: 'note', body: 'one' });
  await waitFor(() => rec.events.length === 1, 'the first event');

  const resetFrames = [];
  b.on('frame', (f) => f.type === 'reset' && resetFrames.push(f));
  // The Rust side, as the superuser with the triggers off, moves the ticket
  // one version on without an event, then changes the subject normally:
  // the log has a hole the server will never fill, so it sends `reset`.
  const { version } = await control('hole', { ticket: ticket.id, subject: 'after the hole' });
  await waitFor(() => rec.snapshots.length === 2, 'a snapshot after the reset', 15000);
  assert.equal(resetFrames.length, 1, 'one reset frame');
  assert.equal(resetFrames[0].ticket_id, ticket.id);
  assert.equal(resetFrames[0].version, version);
  assert.deepEqual(rec.resets.map((r) => r.version), [version]);
  // Order: the reset reached the application before the new snapshot, and no
  // event of the hole's far side was applied on top of the old state.
  const resetAt = rec.calls.indexOf('reset');
  assert.deepEqual(rec.calls.slice(resetAt), ['reset', 'subscribed', 'snapshot']);
  assert.equal(rec.events.length, 1);
  const snap = rec.snapshots[1].ticket;
  assert.equal(snap.version, version);
  assert.equal(snap.subject, 'after the hole');
  const frames = subscribeFrames(b, ticket.id);
  assert.equal(frames.at(-1).since, undefined, 'the subscribe after a reset has no since');
  assert.equal(frames.length, 2, `one resubscribe per reset: ${JSON.stringify(frames)}`);

  // Live from the snapshot on.
  await a.postMessage(ticket.id, { kind: 'note', body: 'after' });
  await waitFor(() => rec.events.length === 2, 'a live event after the reset');
  assertConsecutive(rec.events.slice(1), version + 1);
  await sleep(500);
  assert.equal(rec.resets.length, 1, 'no second reset');
  b.disconnect();
});

test('a since ahead of the ticket (state from another database) is handled as a reset', async () => {
  const a = new LivedeskClient({ baseUrl: BASE(), token: env('LIVEDESK_TOKEN_A') });
  const b = makeClient(env('LIVEDESK_TOKEN_B'));
  await connectLive(b);
  const ticket = await a.createTicket({ subject: 'restored elsewhere' });
  const errors = [];
  b.on('server-error', (f) => errors.push(f.code));
  const rec = subscribeRecorded(b, ticket.id, { since: ticket.version + 50 });
  await waitFor(() => rec.snapshots.length === 1, 'a snapshot after the refused since');
  assert.deepEqual(errors, ['invalid_field']);
  assert.deepEqual(rec.calls, ['reset', 'subscribed', 'snapshot']);
  assert.equal(rec.snapshots[0].ticket.version, ticket.version);
  assert.deepEqual(
    subscribeFrames(b, ticket.id).map((f) => f.since),
    [ticket.version + 50, undefined],
  );
  b.disconnect();
});
