// Presence (viewing, typing, idle, leaving, restored after a reconnect) and
// drafts (kept in the database; colleagues see the marker, never the body).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ApiError } from '../livedesk-client.js';
import { env, makeClient, connectLive, waitFor, subscribeRecorded } from './helpers.mjs';

const viewerOf = (viewers, id) => viewers.find((v) => v.agent.id === id);
const latest = (rec) => rec.presence[rec.presence.length - 1] || [];

test('presence: colleagues see viewing, typing, idle; it survives a reconnect; leaving removes it', async () => {
  const a = makeClient(env('LIVEDESK_TOKEN_A'));
  const b = makeClient(env('LIVEDESK_TOKEN_B'));
  await connectLive(a);
  await connectLive(b);
  const aId = a.agent.id;
  const ticket = await a.createTicket({ subject: 'presence' });
  const recB = subscribeRecorded(b, ticket.id);
  await waitFor(() => recB.snapshots.length === 1, 'B subscribed');
  const recA = subscribeRecorded(a, ticket.id);
  await waitFor(() => viewerOf(latest(recB), aId)?.state === 'viewing', 'B sees A viewing');
  await waitFor(() => viewerOf(latest(recA), b.agent.id), 'A sees B too');

  a.setPresence(ticket.id, 'typing');
  await waitFor(() => viewerOf(latest(recB), aId)?.state === 'typing', 'B sees A typing');
  a.setPresence(ticket.id, 'idle');
  await waitFor(() => viewerOf(latest(recB), aId)?.state === 'idle', 'B sees A idle');
  const sentBefore = a.log.sent.filter((s) => s.frame.type === 'presence').length;
  a.setPresence(ticket.id, 'idle'); // no change: nothing sent
  assert.equal(a.log.sent.filter((s) => s.frame.type === 'presence').length, sentBefore);

  // A's link drops: B sees A leave; A comes back and is idle again at once
  // (the client restores the state it had said).
  a.disconnect();
  await waitFor(() => !viewerOf(latest(recB), aId), 'B sees A leave');
  await connectLive(a);
  await waitFor(() => viewerOf(latest(recB), aId)?.state === 'idle', 'B sees A idle again after the reconnect');
  assert.deepEqual(
    a.log.sent.filter((s) => s.frame.type === 'presence').map((s) => s.frame.state),
    ['typing', 'idle', 'idle'],
  );

  a.unsubscribe(ticket.id);
  await waitFor(() => !viewerOf(latest(recB), aId), 'B sees A leave after unsubscribe');
  a.disconnect();
  b.disconnect();
});

test('drafts: saved, read back, shown to colleagues as a marker, deleted', async () => {
  const a = makeClient(env('LIVEDESK_TOKEN_A'));
  const b = makeClient(env('LIVEDESK_TOKEN_B'));
  await connectLive(a);
  await connectLive(b);
  const aId = a.agent.id;
  const ticket = await a.createTicket({ subject: 'drafts' });
  const msg = await a.postMessage(ticket.id, { kind: 'note', body: 'context' });
  const recB = subscribeRecorded(b, ticket.id);
  subscribeRecorded(a, ticket.id);
  await waitFor(() => viewerOf(latest(recB), aId), 'B sees A');
  assert.equal(viewerOf(latest(recB), aId).draft ?? null, null);

  await assert.rejects(a.getDraft(ticket.id), (e) => e instanceof ApiError && e.status === 404 && e.code === 'not_found');
  const saved = await a.putDraft(ticket.id, { kind: 'reply', body: 'Dear customer,', seen_message_id: msg.id });
  assert.equal(saved.body, 'Dear customer,');
  assert.equal(saved.kind, 'reply');
  assert.equal(saved.seen_message_id, msg.id);
  const again = await a.getDraft(ticket.id);
  assert.equal(again.body, 'Dear customer,');
  assert.equal(again.ticket_id, ticket.id);

  await waitFor(() => viewerOf(latest(recB), aId)?.draft === 'reply', 'B sees A has a draft reply');
  const drafts = await b.listDrafts(ticket.id);
  assert.deepEqual(drafts.map((d) => [d.agent.id, d.kind]), [[aId, 'reply']]);
  assert.equal(JSON.stringify(drafts).includes('Dear customer'), false, 'colleagues never get the body');
  const full = await b.getTicket(ticket.id);
  assert.ok((full.drafts || []).some((d) => d.agent.id === aId), 'GET /api/tickets/{id} lists the draft');

  // A leaves the ticket: the draft stays, colleagues still see it.
  a.unsubscribe(ticket.id);
  await waitFor(() => !viewerOf(latest(recB), aId), 'B sees A leave');
  assert.equal((await b.listDrafts(ticket.id)).length, 1);

  await a.deleteDraft(ticket.id);
  await a.deleteDraft(ticket.id); // idempotent
  await assert.rejects(a.getDraft(ticket.id), (e) => e instanceof ApiError && e.status === 404);
  assert.deepEqual(await b.listDrafts(ticket.id), []);
  a.disconnect();
  b.disconnect();
});
