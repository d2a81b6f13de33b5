// Subscribe: snapshot then every event once and in order; applyTicketEvent
// agrees with the server; resume with `since` after a disconnect.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LivedeskClient, applyTicketEvent } from '../livedesk-client.js';
import {
  BASE, env, makeClient, connectLive, waitFor, subscribeRecorded, subscribeFrames, assertConsecutive, sleep,
} from './helpers.mjs';

const writer = () => new LivedeskClient({ baseUrl: BASE(), token: env('LIVEDESK_TOKEN_A') });

test('subscribe: snapshot, then every change as events in version order, applied to the snapshot', async () => {
  const a = writer();
  const b = makeClient(env('LIVEDESK_TOKEN_B'));
  await connectLive(b);
  const agents = new Map((await b.listAgents()).map((x) => [x.id, x]));
  const me = await a.me();
  const created = await a.createTicket({ subject: 'Printer jam' });
  const rec = subscribeRecorded(b, created.id);
  await waitFor(() => rec.snapshots.length === 1, 'the snapshot');
  assert.deepEqual(rec.calls, ['subscribed', 'snapshot']);
  let held = rec.snapshots[0].ticket;
  assert.equal(held.version, created.version);
  assert.equal(rec.subscribed[0].version, created.version);

  await a.patchTicket(created.id, { subject: { from: 'Printer jam', to: 'Printer jam, 2nd floor' } });
  await a.postMessage(created.id, { kind: 'note', body: 'Checking the tray.' });
  await a.changeTags(created.id, ['hardware'], []);
  await a.patchTicket(created.id, {
    status: { from: 'new', to: 'open' },
    assignee_id: { from: null, to: me.id },
  });
  await waitFor(() => rec.events.length === 4, 'four events');
  assertConsecutive(rec.events, created.version + 1);
  assert.deepEqual(rec.events.map((e) => e.kind), ['ticket.updated', 'message.created', 'tags.changed', 'ticket.updated']);
  assert.equal(rec.events[1].data.message.body, 'Checking the tray.');
  assert.equal(rec.events[0].actor.id, me.id);
  for (const ev of rec.events) {
    const { ticket, complete } = applyTicketEvent(held, ev, { agents });
    assert.ok(complete, `event ${ev.version} applied locally`);
    held = ticket;
  }
  assert.equal(b.appliedVersion(created.id), created.version + 4);
  const { ticket: server } = await a.getTicket(created.id);
  for (const key of ['version', 'subject', 'status', 'tags', 'assignee', 'custom_fields', 'updated_at']) {
    assert.deepEqual(held[key], server[key], key);
  }
  // An event at or below the held version changes nothing.
  assert.equal(applyTicketEvent(held, rec.events[0]).ticket, held);
  b.disconnect();
});

test('subscribe with since: no snapshot, exactly the events after that version', async () => {
  const a = writer();
  const ticket = await a.createTicket({ subject: 'since' });
  for (let i = 1; i <= 3; i++) await a.postMessage(ticket.id, { kind: 'note', body: `n${i}` });
  const b = makeClient(env('LIVEDESK_TOKEN_B'));
  await connectLive(b);
  const rec = subscribeRecorded(b, ticket.id, { since: ticket.version + 1 });
  await waitFor(() => rec.events.length === 2, 'the two missed events');
  await sleep(300);
  assert.deepEqual(rec.calls, ['subscribed', `event ${ticket.version + 2}`, `event ${ticket.version + 3}`]);
  assert.deepEqual(subscribeFrames(b, ticket.id), [{ type: 'subscribe', ticket_id: ticket.id, since: ticket.version + 1 }]);
  b.disconnect();
});

test('resume: after a disconnect the client re-subscribes with since = last applied, missed events once, no snapshot', async () => {
  const a = writer();
  const ticket = await a.createTicket({ subject: 'resume' });
  const b = makeClient(env('LIVEDESK_TOKEN_B'));
  await connectLive(b);
  const rec = subscribeRecorded(b, ticket.id);
  await waitFor(() => rec.snapshots.length === 1, 'the snapshot');
  await a.postMessage(ticket.id, { kind: 'note', body: 'live' });
  await waitFor(() => rec.events.length === 1, 'the live event');
  const last = b.appliedVersion(ticket.id);

  b.disconnect();
  for (let i = 1; i <= 3; i++) await a.postMessage(ticket.id, { kind: 'note', body: `while away ${i}` });
  await connectLive(b);
  await waitFor(() => rec.events.length === 4, 'the three missed events');
  await a.postMessage(ticket.id, { kind: 'note', body: 'live again' });
  await waitFor(() => rec.events.length === 5, 'the next live event');
  await sleep(300);
  assertConsecutive(rec.events, last);
  assert.equal(rec.snapshots.length, 1, 'no second snapshot');
  assert.deepEqual(
    rec.events.slice(1).map((e) => e.data.message.body),
    ['while away 1', 'while away 2', 'while away 3', 'live again'],
  );
  const frames = subscribeFrames(b, ticket.id);
  assert.equal(frames.length, 2);
  assert.equal(frames[0].since, undefined);
  assert.equal(frames[1].since, last);
  b.disconnect();
});

test('unsubscribe: no more events for the ticket', async () => {
  const a = writer();
  const ticket = await a.createTicket({ subject: 'unsubscribe' });
  const b = makeClient(env('LIVEDESK_TOKEN_B'));
  await connectLive(b);
  const rec = subscribeRecorded(b, ticket.id);
  await waitFor(() => rec.snapshots.length === 1, 'the snapshot');
  b.unsubscribe(ticket.id);
  await waitFor(() => b.log.sent.some((s) => s.frame.type === 'unsubscribe'), 'the unsubscribe frame');
  await a.postMessage(ticket.id, { kind: 'note', body: 'nobody listens' });
  await sleep(800);
  assert.equal(rec.events.length, 0);
  assert.equal(b.appliedVersion(ticket.id), null);
  b.disconnect();
});

test('inbox: a summary of a changed ticket arrives', async () => {
  const a = writer();
  const b = makeClient(env('LIVEDESK_TOKEN_B'));
  await connectLive(b);
  const seen = [];
  b.subscribeInbox((t) => seen.push(t));
  await waitFor(() => b.log.sent.some((s) => s.frame.type === 'subscribe_inbox'), 'subscribe_inbox sent');
  await sleep(200);
  const ticket = await a.createTicket({ subject: 'inbox' });
  await waitFor(() => seen.find((t) => t.id === ticket.id), 'the inbox summary');
  b.disconnect();
});
