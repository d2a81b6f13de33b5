// Close code 4001: the agent was disabled (or its token replaced). The client
// emits `unauthorized` with code 4001, goes offline and never reconnects.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ApiError } from '../livedesk-client.js';
import { env, makeClient, connectLive, nextEmit, subscribeRecorded, waitFor, control, sleep } from './helpers.mjs';

test('4001: disabling the agent closes its socket; unauthorized {code: 4001}; no reconnect', async () => {
  const c = makeClient(env('LIVEDESK_TOKEN_REVOKED'));
  await connectLive(c);
  const ticket = await c.createTicket({ subject: 'revoked' });
  const rec = subscribeRecorded(c, ticket.id);
  await waitFor(() => rec.snapshots.length === 1, 'the snapshot');
  const states = [];
  c.on('state', (s) => states.push(s));
  const unauthorized = nextEmit(c, 'unauthorized', 15000);

  await control('disable', { email: env('LIVEDESK_EMAIL_REVOKED') }); // as `livedesk agent disable`
  const [reason, info] = await unauthorized;
  assert.deepEqual(info, { code: 4001 });
  assert.equal(typeof reason, 'string');
  assert.ok(reason.length > 0);
  assert.deepEqual(c.log.closes.map((x) => x.code), [4001]);
  assert.equal(c.state, 'offline');
  assert.deepEqual(states, ['offline']);

  await sleep(3000); // longer than the first backoffs (0.5 s, 1 s)
  assert.equal(c.log.opened.length, 1, 'no second WebSocket after 4001');
  assert.equal(c.state, 'offline');
  // The token is refused over HTTP too.
  await assert.rejects(c.me(), (e) => e instanceof ApiError && e.status === 401);
});
