// Connecting: the state sequence, `hello`, the HTTP side, a refused token.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LivedeskClient, ApiError, ConnectionState } from '../livedesk-client.js';
import { BASE, env, makeClient, nextEmit, waitFor } from './helpers.mjs';

test('connect: connecting → live, hello names the agent of the token, disconnect → offline', async () => {
  const client = makeClient(env('LIVEDESK_TOKEN_A'));
  const states = [];
  client.on('state', (s) => states.push(s));
  assert.equal(client.state, ConnectionState.OFFLINE);
  const hello = nextEmit(client, 'hello');
  client.connect();
  client.connect(); // idempotent: one socket
  const [frame] = await hello;
  const me = await client.me();
  assert.equal(frame.agent.id, me.id);
  assert.equal(frame.agent.email, me.email);
  assert.deepEqual(client.agent, frame.agent);
  assert.ok(frame.heartbeat_ms > 0);
  assert.deepEqual(states, ['connecting', 'live']);
  assert.equal(client.log.opened.length, 1);
  assert.match(client.log.opened[0].url, /^ws:\/\/127\.0\.0\.1:\d+\/ws\?access_token=/);
  client.disconnect();
  assert.equal(client.state, 'offline');
  await new Promise((r) => setTimeout(r, 700));
  assert.equal(client.log.opened.length, 1, 'no reconnect after disconnect()');
});

test('HTTP: a refused token throws ApiError 401 and emits unauthorized (401)', async () => {
  const client = new LivedeskClient({ baseUrl: BASE(), token: 'ldk_not-a-token' });
  const seen = [];
  client.on('unauthorized', (reason, info) => seen.push(info.code));
  await assert.rejects(client.me(), (e) => e instanceof ApiError && e.status === 401 && e.code === 'unauthorized');
  assert.deepEqual(seen, [401]);
});

test('HTTP: a conflict carries its details (ApiError.details)', async () => {
  const client = new LivedeskClient({ baseUrl: BASE(), token: env('LIVEDESK_TOKEN_A') });
  const ticket = await client.createTicket({ subject: 'conflict' });
  await assert.rejects(
    client.patchTicket(ticket.id, { subject: { from: 'not what it is', to: 'x' } }),
    (e) => e instanceof ApiError && e.status === 409 && e.code === 'field_conflict' && 'subject' in e.details.fields,
  );
  const patched = await client.patchTicket(ticket.id, { subject: { from: 'conflict', to: 'resolved' } }, ticket.version);
  assert.equal(patched.subject, 'resolved');
  assert.equal(patched.version, ticket.version + 1);
});

test('a server-error event for a refused frame; the connection stays live', async () => {
  const client = makeClient(env('LIVEDESK_TOKEN_A'));
  const hello = nextEmit(client, 'hello');
  client.connect();
  await hello;
  const error = nextEmit(client, 'server-error');
  client.subscribe(987654321, {});
  const [frame] = await error;
  assert.equal(frame.code, 'not_found');
  assert.equal(frame.ticket_id, 987654321);
  await waitFor(() => client.state === 'live', 'still live');
  client.disconnect();
});
