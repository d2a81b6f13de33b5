// Type-checked (never run) by types.test.mjs with `tsc --noEmit --strict`:
// how an application uses the package, through its `exports` and `types`.
import LivedeskClient, {
  ApiError,
  ConnectionState,
  applyTicketEvent,
  type ConnectionStateName,
  type Message,
  type Ticket,
  type TicketEvent,
  type Viewer,
  type WebSocketConstructor,
} from '@livedesk/client';

export async function example(WebSocketImpl: WebSocketConstructor): Promise<void> {
  const { token } = await LivedeskClient.login('code-from-the-link', { baseUrl: 'http://127.0.0.1:8080' });
  const client = new LivedeskClient({ baseUrl: 'http://127.0.0.1:8080', token, WebSocket: WebSocketImpl });
  const offState = client.on('state', (s: ConnectionStateName) => console.log(s === ConnectionState.LIVE));
  client.on('unauthorized', (reason, info) => {
    const code: 401 | 4001 = info.code;
    console.log(reason.toUpperCase(), code);
  });
  client.on('hello', (hello) => console.log(hello.agent.email, hello.heartbeat_ms));
  client.on('server-error', (f) => console.log(f.code, f.ticket_id ?? null));
  client.on('fields', (fields) => console.log(fields.map((f) => f.key)));
  offState();
  client.connect();

  const me = await client.me();
  const tickets: Ticket[] = await client.listTickets({ status: 'open', assignee: 'me' });
  const { ticket, messages, presence } = await client.getTicket(tickets[0]?.id ?? 1);
  let held: Ticket = ticket;
  const agents = new Map((await client.listAgents()).map((a) => [a.id, a] as const));
  const unsubscribe = client.subscribe(
    ticket.id,
    {
      onSnapshot: (snap) => {
        held = snap.ticket;
        const ms: Message[] = snap.messages;
        console.log(ms.length);
      },
      onEvent: (ev: TicketEvent) => {
        const next = applyTicketEvent(held, ev, { agents });
        if (next.complete) held = next.ticket;
        if (ev.kind === 'message.created' && ev.data.message) console.log(ev.data.message.body);
      },
      onPresence: (viewers: Viewer[]) => console.log(viewers.map((v) => `${v.agent.name}:${v.state}:${v.draft ?? ''}`)),
      onReset: (f) => console.log('reset to', f.version),
      onSubscribed: (f) => console.log(f.version),
    },
    { since: ticket.version },
  );
  client.setPresence(ticket.id, 'typing');
  const v: number | null = client.appliedVersion(ticket.id);
  console.log(v, me.role, messages.length, presence.length);

  try {
    const updated: Ticket = await client.patchTicket(ticket.id, { status: { from: 'new', to: 'open' } }, ticket.version);
    console.log(updated.version);
  } catch (e) {
    if (e instanceof ApiError && e.code === 'field_conflict') console.log(e.details.fields, e.status);
  }
  const reply: Message = await client.postMessage(ticket.id, { kind: 'reply', body: 'Hi', seen_message_id: 3, client_id: 'x' });
  const tags = await client.changeTags(ticket.id, ['vip'], []);
  const events: TicketEvent[] = await client.listEvents(ticket.id, { since: 0, limit: 10 });
  const page = await client.listMessages(ticket.id, { before: reply.id });
  const draft = await client.putDraft(ticket.id, { kind: 'reply', body: 'Dear' }, { keepalive: true });
  const mine = await client.getDraft(ticket.id);
  await client.deleteDraft(ticket.id);
  const colleagues = await client.listDrafts(ticket.id);
  const fields = await client.listFields();
  const stop = client.subscribeInbox((t, frame) => console.log(t.viewers?.length, frame.type));
  console.log(tags.tags, events.length, page.messages_before, draft.updated_at, mine.body, colleagues[0]?.agent.name, fields);
  stop();
  unsubscribe();
  client.unsubscribe(ticket.id);
  console.log(client.state, client.agent?.name, await client.request<{ ok: boolean }>('GET', '/healthz'));
  client.disconnect();

  // @ts-expect-error: presence states are viewing | typing | idle
  client.setPresence(ticket.id, 'away');
  // @ts-expect-error: an unknown client event
  client.on('nonsense', () => {});
  // @ts-expect-error: patchTicket takes {field: {from, to}}
  await client.patchTicket(ticket.id, { status: 'open' });
}
