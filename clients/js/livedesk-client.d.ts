/**
 * TypeScript declarations of `livedesk-client.js` (`@livedesk/client`).
 * Hand-written; `test/types.test.mjs` checks them against the module (every
 * public export and method declared, nothing declared that does not exist)
 * and type-checks `test/usage.ts` with `tsc --noEmit --strict`.
 * Shapes follow docs/protocol.md and `GET /api/openapi.json`.
 */

// ------------------------------------------------------------------ shapes

export type TicketStatus = 'new' | 'open' | 'pending' | 'resolved' | 'closed';
export type PresenceState = 'viewing' | 'typing' | 'idle';
export type MessageKind = 'customer' | 'reply' | 'note';
export type DraftKind = 'reply' | 'note';
export type AgentRole = 'agent' | 'admin' | 'service';

/** `{id, name, avatar_url}`: an agent as tickets, viewers and drafts name it. */
export interface AgentRef {
  id: number;
  name: string;
  avatar_url: string | null;
}

/** `GET /api/me`, `hello.agent`. */
export interface Me extends AgentRef {
  email: string;
  role: AgentRole;
}

/** `GET /api/agents` entries. */
export interface DirectoryAgent extends AgentRef {
  role: AgentRole;
}

export interface Customer {
  id: number;
  name: string | null;
  email: string;
}

/** The contract's `ticket`. */
export interface Ticket {
  id: number;
  version: number;
  subject: string;
  status: TicketStatus;
  priority: string;
  channel: string;
  customer: Customer | null;
  assignee: AgentRef | null;
  tags: string[];
  custom_fields: Record<string, unknown>;
  created_at: string;
  updated_at: string;
  /** In `GET /api/tickets` and `inbox` frames (ext.). */
  viewers?: Viewer[];
}

/** The contract's `message`. */
export interface Message {
  id: number;
  ticket_id: number;
  kind: MessageKind;
  author: { type: 'agent' | 'customer'; id: number; name: string | null };
  body: string;
  created_at: string;
  seen_message_id: number | null;
  client_id: string | null;
}

/** One entry of a presence list: one per agent, ordered by arrival. */
export interface Viewer {
  agent: AgentRef;
  state: PresenceState;
  /** When that state began (RFC 3339, UTC). */
  since: string;
  /** The agent's unsent draft on the ticket, if any (ext.). */
  draft?: DraftKind | null;
}

export type EventKind = 'ticket.created' | 'ticket.updated' | 'message.created' | 'tags.changed';

/** An `event` frame (also the items of `GET /api/tickets/{id}/events`). */
export interface TicketEvent {
  type?: 'event';
  ticket_id: number;
  version: number;
  kind: EventKind | string;
  actor: { type: 'agent'; id: number; name: string } | null;
  at: string;
  data: {
    ticket?: Ticket;
    message?: Message;
    changes?: Record<string, { from: unknown; to: unknown }>;
    added?: string[];
    removed?: string[];
    tags?: string[];
    [key: string]: unknown;
  };
}

export interface HelloFrame {
  type: 'hello';
  agent: Me;
  heartbeat_ms: number;
}

export interface SubscribedFrame {
  type: 'subscribed';
  ticket_id: number;
  version: number;
}

export interface SnapshotFrame {
  type: 'snapshot';
  ticket: Ticket;
  messages: Message[];
  presence?: Viewer[];
  messages_before?: number | null;
}

export interface PresenceFrame {
  type: 'presence';
  ticket_id: number;
  viewers: Viewer[];
}

export interface InboxFrame {
  type: 'inbox';
  ticket: Ticket;
}

export interface ResetFrame {
  type: 'reset';
  ticket_id: number;
  /** The ticket's version after the database went back; null when the client inferred it (a refused `since`). */
  version: number | null;
}

export interface ErrorFrame {
  type: 'error';
  code: string;
  message: string;
  ticket_id?: number;
}

export interface FieldDefinition {
  key: string;
  label: string;
  type: string;
  options?: string[] | null;
  position?: number;
  [key: string]: unknown;
}

export interface Draft {
  ticket_id: number;
  kind: DraftKind;
  body: string;
  seen_message_id: number | null;
  updated_at: string;
}

export interface ColleagueDraft {
  agent: AgentRef;
  kind: DraftKind;
  updated_at: string;
}

export type Changes = Record<string, { from: unknown; to: unknown }>;

// ------------------------------------------------------------------ errors

/** The contract's error object (`{error: {code, message, ...details}}`). */
export interface ErrorBody {
  error: { code: string; message: string; [detail: string]: unknown };
}

/** An HTTP answer that was not 2xx (status 0: no answer at all). */
export class ApiError extends Error {
  constructor(status: number, body: ErrorBody | any);
  readonly name: 'ApiError';
  /** HTTP status code; 0 when the request never got an answer. */
  status: number;
  /** `error.code` (e.g. `field_conflict`), `network_error`, or `http_<status>`. */
  code: string;
  /** The whole decoded answer, or null. */
  body: ErrorBody | any;
  /** The `error` object of the answer (details included), or `{}`. */
  readonly details: { code?: string; message?: string; [detail: string]: any };
}

// ------------------------------------------------------------------ client

export type ConnectionStateName = 'connecting' | 'live' | 'reconnecting' | 'offline';

export declare const ConnectionState: Readonly<{
  CONNECTING: 'connecting';
  LIVE: 'live';
  RECONNECTING: 'reconnecting';
  OFFLINE: 'offline';
}>;

/** The part of the WHATWG `WebSocket` the client uses (the global one, or e.g. npm `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /** Origin (and optional path prefix) of the server; default: the page's origin. Absolute outside a browser. */
  baseUrl?: string;
  /** The agent's bearer token. */
  token?: string;
  /** WebSocket implementation; default: `globalThis.WebSocket` (browsers, Node >= 22). */
  WebSocket?: WebSocketConstructor;
}

/** `client.on(name, listener)`: the events and their arguments. */
export interface ClientEvents {
  state: (state: ConnectionStateName) => void;
  hello: (frame: HelloFrame) => void;
  /** HTTP 401 (`info.code` 401) or close code 4001 (`info.code` 4001, no reconnect). */
  unauthorized: (reason: string, info: { code: 401 | 4001 }) => void;
  'server-error': (frame: ErrorFrame) => void;
  fields: (fields: FieldDefinition[]) => void;
  frame: (frame: { type: string; [key: string]: any }) => void;
}

export interface SubscriptionHandlers {
  /** Only without `since`: the ticket at `subscribed.version`. */
  onSnapshot?: (frame: SnapshotFrame) => void;
  /** Every event exactly once, in version order, across reconnects. */
  onEvent?: (event: TicketEvent) => void;
  onPresence?: (viewers: Viewer[], frame: PresenceFrame) => void;
  onSubscribed?: (frame: SubscribedFrame) => void;
  /** Drop what you hold for the ticket: a snapshot follows. */
  onReset?: (frame: ResetFrame) => void;
}

export interface RequestOptions {
  query?: Record<string, string | number | boolean | null | undefined>;
  body?: unknown;
  headers?: Record<string, string>;
  keepalive?: boolean;
}

export interface TicketFilters {
  status?: TicketStatus | string;
  assignee?: 'me' | 'none' | number | string;
  tag?: string;
  limit?: number;
  before?: string | number;
}

export interface NewTicket {
  subject?: string;
  channel?: string;
  priority?: string;
  customer?: { email: string; name?: string };
  body?: string;
}

export interface NewMessage {
  kind: MessageKind;
  body: string;
  seen_message_id?: number | null;
  client_id?: string;
  customer?: { email: string; name?: string };
}

export class LivedeskClient {
  constructor(options?: ClientOptions);

  /** Spend a one-time login link's code for a token (no token needed). */
  static login(code: string, opts?: { baseUrl?: string }): Promise<{ token: string; agent: Me }>;
  /** POST /api/logout: end this client's token (other sessions go on). */
  logout(): Promise<null>;

  baseUrl: string;
  token: string | undefined;
  /** The token's agent, from the last `hello` (null before the first). */
  agent: Me | null;
  /** The current connection state. */
  readonly state: ConnectionStateName;

  /** Listen to a client event; returns a function that removes the listener. */
  on<K extends keyof ClientEvents>(name: K, listener: ClientEvents[K]): () => void;

  // HTTP (contract §5); non-2xx throws ApiError.
  request<T = any>(method: string, path: string, opts?: RequestOptions): Promise<T>;
  me(): Promise<Me>;
  listTickets(filters?: TicketFilters): Promise<Ticket[]>;
  createTicket(ticket: NewTicket): Promise<Ticket>;
  getTicket(
    id: number,
  ): Promise<{ ticket: Ticket; messages: Message[]; presence: Viewer[]; drafts?: ColleagueDraft[]; messages_before?: number | null }>;
  /** 409: `field_conflict` (`details.fields`), `already_assigned` (`details.assignee`), `stale_version`. */
  patchTicket(id: number, changes: Changes, ifMatch?: number | null): Promise<Ticket>;
  /** 409 `duplicate_reply` with `details.replies`. */
  postMessage(id: number, message: NewMessage): Promise<Message>;
  changeTags(id: number, add?: string[], remove?: string[]): Promise<{ tags: string[]; version: number }>;
  listEvents(id: number, opts?: { since?: number; limit?: number }): Promise<TicketEvent[]>;
  listFields(): Promise<FieldDefinition[]>;
  putField(key: string, definition: Partial<FieldDefinition>): Promise<FieldDefinition>;
  listMessages(id: number, opts?: { before?: number; limit?: number }): Promise<{ messages: Message[]; messages_before: number | null }>;
  putDraft(
    id: number,
    draft: { kind: DraftKind; body: string; seen_message_id?: number | null },
    opts?: { keepalive?: boolean },
  ): Promise<Draft>;
  /** 404 `not_found` when there is none. */
  getDraft(id: number): Promise<Draft>;
  deleteDraft(id: number, opts?: { keepalive?: boolean }): Promise<unknown>;
  listDrafts(id: number): Promise<ColleagueDraft[]>;
  listAgents(): Promise<DirectoryAgent[]>;

  // WebSocket (contract §6)
  /** Open the WebSocket (idempotent); reconnects by itself until `disconnect()`. */
  connect(): void;
  /** Close and stop reconnecting; subscriptions are kept for a later `connect()`. */
  disconnect(): void;
  /** Follow a ticket; subscribing again replaces the handlers. Returns an unsubscribe function. */
  subscribe(ticketId: number, handlers: SubscriptionHandlers, opts?: { since?: number | null }): () => void;
  unsubscribe(ticketId: number): void;
  /** The last version applied for a subscribed ticket, or null. */
  appliedVersion(ticketId: number): number | null;
  /** A summary of every ticket created or changed from now on; returns a function that removes the handler. */
  subscribeInbox(handler: (ticket: Ticket, frame: InboxFrame) => void): () => void;
  /** My state on a subscribed ticket; only changes are sent, restored after a reconnect. */
  setPresence(ticketId: number, state: PresenceState): void;
}

/**
 * Apply one event to a ticket you hold (contract v2 §6). Returns a new
 * ticket at the event's version; `complete: false` means read the ticket
 * again (an agent missing from `agents`, a new customer).
 */
export function applyTicketEvent(
  ticket: Ticket,
  event: TicketEvent,
  opts?: { agents?: Map<number, AgentRef> },
): { ticket: Ticket; complete: boolean };

export default LivedeskClient;
