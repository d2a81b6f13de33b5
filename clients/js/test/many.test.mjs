// Many tickets on one connection: 70 subscriptions, more than the server's
// subscribe budget of one connection (50 at once, then 5 a second). The
// client sends at most 8 subscribes before their answers, puts refused ones
// back in its queue, and after a lost connection resumes every ticket with
// `since`: the changes made meanwhile arrive once, no snapshot is taken
// again, none is left unsubscribed. (A review found the client lost the
// subscriptions past ~50 at a reconnect.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LivedeskClient } from '../livedesk-client.js';
import { BASE, env, makeClient, connectLive, waitFor, subscribeRecorded, subscribeFrames } from './helpers.mjs';

const TICKETS = 70;
const WINDOW = 8;

test('70 tickets: subscribed a few at a time, and all resumed with since after a reconnect', async () => {
  const a = new LivedeskClient({ baseUrl: BASE(), token: env('LIVEDESK_TOKEN_A') });
  const b = makeClient(env('LIVEDESK_TOKEN_B'));
  await connectLive(b);
  const tickets = [];
  for (let i = 0; i < TICKETS; i++) tickets.push(await a.createTicket({ subject: `many ${i}` }));

  // The most subscribes ever waiting for their answer.
  let answered = 0;
  let mostWaiting = 0;
  const refusals = [];
  b.on('frame', (f) => {
    const answer = f.type === 'subscribed' || (f.type === 'error' && f.ticket_id !== undefined);
    if (!answer) return;
    const sent = b.log.sent.filter((s) => s.frame.type === 'subscribe').length;
    mostWaiting = Math.max(mostWaiting, sent - answered);
    answered += 1;
    if (f.type === 'error') refusals.push(f.code);
  });

  const recs = new Map(tickets.map((t) => [t.id, subscribeRecorded(b, t.id)]));
  await waitFor(() => [...recs.values()].every((r) => r.snapshots.length === 1), 'a snapshot of every ticket', 40000);
  assert.ok(refusals.length > 0, 'the connection went past its subscribe budget');
  assert.ok(refusals.every((c) => c === 'rate_limited'), JSON.stringify(refusals));

  // Cut the connection; change five tickets while it is down.
  const changed = tickets.slice(0, 5);
  b.log.sockets.at(-1).close();
  await waitFor(() => b.state !== 'live', 'the connection lost');
  for (const t of changed) await a.patchTicket(t.id, { subject: { from: t.subject, to: `${t.subject}, changed` } });
  await waitFor(() => b.state === 'live', 'live again');
  await waitFor(() => [...recs.values()].every((r) => r.subscribed.length === 2), 'every ticket subscribed again', 40000);
  await waitFor(() => changed.every((t) => recs.get(t.id).events.length === 1), 'the changes made while away');

  for (const t of tickets) {
    const rec = recs.get(t.id);
    assert.equal(rec.snapshots.length, 1, `ticket ${t.id}: no second snapshot`);
    const again = subscribeFrames(b, t.id).at(-1);
    assert.equal(again.since, t.version, `ticket ${t.id} resumed with since`);
    assert.equal(b.appliedVersion(t.id), changed.includes(t) ? t.version + 1 : t.version);
  }
  assert.ok(mostWaiting <= WINDOW, `at most ${WINDOW} subscribes waited for an answer: ${mostWaiting}`);
  b.disconnect();
});
