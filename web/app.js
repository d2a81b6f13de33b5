/*
 * livedesk agent console — entry point: login, the shell (top bar, connection
 * state, logout), routing (#/tickets/<id>), the inbox and the ticket view.
 * Modules: livedesk-client.js (API + WebSocket: the client package clients/js,
 * served at /livedesk-client.js), dom.js (DOM helpers), inbox.js (InboxView),
 * notifications.js (NotificationCenter), ticket.js (TicketView, composed of
 * ticket-thread.js, ticket-composer.js, ticket-fields.js, ticket-presence.js,
 * ticket-history.js and field-editor.js; see web/README.md).
 *
 * Stable data-testid attributes for browser tests:
 *   login-token            the token input on the login form
 *   login-submit           the login button
 *   login-error            why the login failed
 *   logout                 the logout button
 *   notifications-button   "Notifications" (badge: unread count); opens notifications-panel
 *   notifications-panel    the list of notifications (links to the tickets)
 *   inbox-unread           "N new" badge next to the inbox heading
 *   me-name                the logged-in agent's name
 *   app-banner             a message above the console (an ignored login link)
 *   conn-state             connection indicator; data-state = connecting|live|reconnecting|offline
 *   inbox-list             the list of inbox rows
 *   inbox-row-<id>         one inbox row (a link); data-status
 *   inbox-assignee-<id>    the assignee name in a row
 *   inbox-refresh          reload the inbox
 *   filter-status          inbox filter: '' (any) | new | open | pending | resolved | closed
 *   filter-assignee        inbox filter: '' (anyone) | me | none
 *   filter-tag             inbox filter: a tag (Enter applies)
 *   ticket-view            the open ticket; data-ticket-id
 *   ticket-subject         subject input
 *   subject-save           save the subject (Enter in the input too)
 *   ticket-status          status select
 *   ticket-priority        priority select
 *   ticket-notice          general notices of the ticket view
 *   assignee-name          assignee's name ("Unassigned"); data-assignee-id
 *   take-button            assign to me (if a colleague holds it: shows already-taken)
 *   take-over              explicit "Take over from <name>" in the already-taken notice
 *   release-button         unassign me
 *   already-taken          notice "Already taken by <name>"
 *   assign-to              the "Assign to" picker (GET /api/agents)
 *   assign-button          assign to the picked colleague (compare-and-set from the shown assignee)
 *   tag-chip-<tag>         a tag chip
 *   tag-remove-<tag>       remove that tag
 *   tag-input              new tag input (comma-separated allowed)
 *   tag-add                add the tag(s)
 *   conversation           the message list
 *   message-<id>           one message; data-kind = customer|reply|note
 *   typing-indicator       "<name> is typing…"
 *   composer-body          composer textarea (Ctrl+Enter sends)
 *   composer-kind          composer select: reply | note
 *   composer-send          send button
 *   composer-error         a send that failed (draft kept)
 *   duplicate-notice       "<name> just replied:" after a 409 duplicate_reply
 *   duplicate-reply-<id>   a colleague's reply shown in the duplicate notice
 *   discard-draft          "Discard": drop my draft
 *   edit-reply             "Edit my reply": acknowledge the shown messages, keep writing
 *   send-anyway            resend, having seen the colleague's reply
 *   unseen-notice          "N new messages … while you were writing" (button "Show it")
 *   draft-status           "Draft saved" / "Draft restored …"
 *   colleague-drafts       "<name> has an unsent reply (2 min ago)"; items draft-of-<agentId>
 *   presence-bar           the colleagues on the ticket
 *   presence-<agentId>     one colleague; data-state = viewing|typing|idle
 *   field-<key>            custom field editor (multiselect: a fieldset of
 *                          checkboxes field-<key>-<option>)
 *   field-conflict-<name>  conflict notice next to a field; <name> is the PATCH
 *                          field: subject, status, priority, custom_fields.<key>
 *   conflict-current-<name>, conflict-keep-mine-<name>, conflict-use-theirs-<name>
 *                          the current value / "Use mine" / "Keep theirs" in it
 */

import { LivedeskClient } from './livedesk-client.js';
import { h, replaceChildren, avatar } from './dom.js';
import { InboxView } from './inbox.js';
import { TicketView } from './ticket.js';
import { NotificationCenter } from './notifications.js';

const TOKEN_KEY = 'livedesk.token';
const root = document.getElementById('app');

/** The logged-in session: {client, me, fields, inbox, ticketView, offs[]} */
let session = null;

const STATE_TEXT = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  offline: 'Offline',
};

/** A login fragment: the whole fragment, never part of a route. */
const CREDENTIAL_FRAGMENT = /^#(token|login)=([^&]+)$/;

/**
 * A credential in the URL (`#token=…`, or a one-time `#login=…` link as
 * printed at first start and by the demo), removed from the URL at once:
 * {token} or {login}, or null.
 */
function fragmentCredential() {
  const m = CREDENTIAL_FRAGMENT.exec(location.hash);
  if (!m) return null;
  history.replaceState(null, '', location.pathname + location.search);
  return { [m[1]]: decodeURIComponent(m[2]) };
}

/** The token of a credential; a login code is spent for one (null when spent, expired or offline). */
async function tokenOf(credential) {
  if (credential.token) return credential.token;
  try {
    return (await LivedeskClient.login(credential.login)).token;
  } catch {
    return null; // the login form says what to do
  }
}

/**
 * Log in with a credential from the URL, or with this tab's session. A link
 * never switches a tab that is logged in to another agent: a page that can
 * set this tab's URL (an opener, a link) would otherwise make the agent
 * write replies and drafts as someone else without noticing. The link is
 * dropped unspent and the agent is told; logging out first lets it work.
 */
async function logIn() {
  const credential = fragmentCredential();
  const stored = sessionStorage.getItem(TOKEN_KEY);
  if (credential && stored && credential.token !== stored) {
    if (!session) await start(stored);
    showBanner(
      'A login link was opened in this tab while you are logged in: it was ignored, and you are still logged in as yourself. ' +
        'To use it, log out first, then open it again.',
    );
    return;
  }
  const token = credential ? await tokenOf(credential) : stored;
  if (!token) return showLogin();
  sessionStorage.setItem(TOKEN_KEY, token);
  if (!session) await start(token);
}

async function boot() {
  window.addEventListener('hashchange', onHashChange);
  await logIn();
}

function onHashChange() {
  if (CREDENTIAL_FRAGMENT.test(location.hash)) {
    logIn();
    return;
  }
  if (session) route();
}

/** A message above the console (e.g. an ignored login link), until dismissed. */
function showBanner(text) {
  if (!session) return;
  replaceChildren(
    session.banner,
    h('span', {}, text),
    h('button', { type: 'button', class: 'btn btn-small', onclick: () => (session.banner.hidden = true) }, 'Dismiss'),
  );
  session.banner.hidden = false;
}

// ------------------------------------------------------------------ login

function showLogin(message) {
  document.title = 'livedesk — log in';
  const input = h('input', {
    id: 'login-token',
    type: 'password',
    required: true,
    autocomplete: 'current-password',
    spellcheck: 'false',
    dataset: { testid: 'login-token' },
    'aria-describedby': 'login-help',
  });
  const error = h('p', { class: 'login-error', role: 'alert', dataset: { testid: 'login-error' } }, message || '');
  const form = h(
    'form',
    {
      class: 'login-card',
      'aria-labelledby': 'login-title',
      onsubmit: (e) => {
        e.preventDefault();
        const token = input.value.trim();
        if (!token) return;
        sessionStorage.setItem(TOKEN_KEY, token);
        start(token);
      },
    },
    h('h1', { id: 'login-title' }, 'livedesk'),
    h('p', { id: 'login-help', class: 'muted' }, 'Log in with your agent token (printed by ', h('code', {}, 'livedesk agent add'), ') or open your login link.'),
    h('label', { for: 'login-token' }, 'Access token'),
    input,
    error,
    h('button', { type: 'submit', class: 'btn btn-primary', dataset: { testid: 'login-submit' } }, 'Log in'),
  );
  replaceChildren(root, h('main', { class: 'login' }, form));
  input.focus();
}

// ------------------------------------------------------------------ session

async function start(token) {
  replaceChildren(root, h('p', { class: 'loading', role: 'status' }, 'Logging in…'));
  const client = new LivedeskClient({ token });
  let me;
  try {
    me = await client.me();
  } catch (e) {
    if (e.status === 401 || e.status === 403) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin('That token was not accepted. Check it and try again.');
    } else {
      showLogin(`Cannot reach livedesk (${e.message}). Try again.`);
    }
    return;
  }
  let fields = [];
  try {
    fields = await client.listFields();
  } catch (e) {
    console.warn('could not load field definitions', e);
  }

  session = { client, me, fields, inbox: null, ticketView: null, offs: [], baseTitle: 'livedesk' };
  buildShell();
  session.offs.push(client.on('fields', (defs) => setFields(defs)));
  session.offs.push(
    client.on('unauthorized', (_reason, info) =>
      logout(
        info && info.code === 4001
          ? 'Your access was revoked: your agent was disabled or your token replaced. Log in with a new token.'
          : 'Your session has ended. Please log in again.',
      ),
    ),
  );
  client.connect();
  session.inbox.load();
  session.notifications.prime();
  route();
}

/** Field definitions changed: the open ticket rebuilds its Fields section. */
function setFields(defs) {
  if (!session) return;
  session.fields = [...defs].sort((a, b) => (a.position ?? 0) - (b.position ?? 0));
  if (session.ticketView) session.ticketView.setFieldDefs(session.fields);
}

/** After a reconnect a `fields` frame may have been missed: read them again. */
async function reloadFields() {
  if (!session) return;
  const { client } = session;
  try {
    const defs = await client.listFields();
    if (session && session.client === client) setFields(defs);
  } catch (e) {
    console.warn('could not reload the field definitions', e);
  }
}

/** The tab title: "(2) #12 Printer on fire — livedesk" with unread notifications. */
function setTitle(base) {
  if (!session) return;
  if (base !== undefined) session.baseTitle = base;
  const unread = session.notifications ? session.notifications.unread : 0;
  document.title = (unread ? `(${unread}) ` : '') + session.baseTitle;
}

function buildShell() {
  const { client, me } = session;
  const conn = h('div', { class: 'conn-state', role: 'status', 'aria-live': 'polite', dataset: { testid: 'conn-state', state: client.state } });
  const renderConn = (state) => {
    conn.dataset.state = state;
    replaceChildren(conn, h('span', { class: 'conn-dot', 'aria-hidden': 'true' }), h('span', {}, STATE_TEXT[state] || state));
  };
  renderConn(client.state);
  let wasLive = false;
  session.offs.push(
    client.on('state', (state) => {
      renderConn(state);
      // Inbox frames sent while we were away are lost: reload the list.
      if (state === 'live') {
        if (wasLive) {
          session.inbox.load();
          session.notifications.catchUp();
          reloadFields();
        }
        wasLive = true;
      }
    }),
  );

  session.inbox = new InboxView({ client, me });
  session.notifications = new NotificationCenter({
    client,
    me,
    onChange: (unread, center) => {
      setTitle();
      session.inbox.setUnread(center.unreadTickets(), unread);
    },
  });
  const onKey = (e) => {
    if (e.key === 'Escape') session && session.notifications.close();
  };
  document.addEventListener('keydown', onKey);
  session.offs.push(() => document.removeEventListener('keydown', onKey));
  session.ticketPane = h('section', { class: 'ticket-pane', id: 'ticket-pane', tabindex: '-1', 'aria-label': 'Ticket' });
  session.banner = h('p', { class: 'app-banner', role: 'alert', hidden: true, dataset: { testid: 'app-banner' } });

  replaceChildren(
    root,
    h('a', { class: 'skip-link', href: '#ticket-pane', onclick: skipToTicket }, 'Skip to ticket'),
    h(
      'header',
      { class: 'topbar' },
      h('h1', { class: 'brand' }, h('a', { href: '#/' }, 'livedesk')),
      conn,
      h('div', { class: 'me' }, session.notifications.el, avatar(me, { size: 'sm' }), h('span', { dataset: { testid: 'me-name' } }, me.name)),
      h('button', { type: 'button', class: 'btn btn-small', dataset: { testid: 'logout' }, onclick: () => logOutHere() }, 'Log out'),
    ),
    session.banner,
    h('main', { class: 'layout' }, h('div', { class: 'inbox-pane' }, session.inbox.el), session.ticketPane),
  );
}

function skipToTicket(e) {
  e.preventDefault();
  session && session.ticketPane.focus();
}

function route() {
  const m = /^#\/tickets\/(\d+)/.exec(location.hash);
  const id = m ? Number(m[1]) : null;
  const current = session.ticketView;
  if (current && current.id === id) return;
  if (current) current.destroy();
  session.ticketView = null;
  session.inbox.select(id);
  if (id !== null) session.notifications.ticketOpened(id);
  if (id === null) {
    setTitle('livedesk');
    replaceChildren(session.ticketPane, h('p', { class: 'placeholder muted' }, 'Select a ticket in the inbox.'));
    return;
  }
  const view = new TicketView({
    client: session.client,
    me: session.me,
    fields: session.fields,
    id,
    // One agent directory per session (GET /api/agents), for the assignment picker.
    loadAgents: () => (session.agents ||= session.client.listAgents().catch((e) => {
      session.agents = null;
      throw e;
    })),
    onHeld: (info) => session && session.notifications.held(info),
    onTicket: (t) => {
      if (session && session.ticketView === view) {
        setTitle(`#${t.id} ${t.subject || ''} — livedesk`);
        session.inbox.updateFromTicket(t);
      }
    },
  });
  session.ticketView = view;
  replaceChildren(session.ticketPane, view.el);
  view.load();
}

function endSession() {
  if (!session) return;
  if (session.ticketView) session.ticketView.destroy();
  if (session.inbox) session.inbox.destroy();
  if (session.notifications) session.notifications.destroy();
  for (const off of session.offs) off();
  session.client.disconnect();
  session = null;
}

/**
 * The "Log out" button: forget the token here at once, and end it on the
 * server (the agent's other sessions, other devices, go on). Should the
 * server not be told (offline, busy), the login screen says the token may
 * still work, rather than letting the agent believe it ended.
 */
async function logOutHere() {
  const client = session ? session.client : null;
  logout();
  if (!client) return;
  try {
    await client.logout();
  } catch (e) {
    if (e && e.status === 401) return; // it no longer worked anyway
    console.warn('the token could not be ended on the server', e);
    showLogin(
      `Logged out in this tab, but the server could not end your token (${e.message}): it may still work. ` +
        'Ask an admin to replace it (livedesk agent token).',
    );
  }
}

function logout(message) {
  endSession();
  sessionStorage.removeItem(TOKEN_KEY);
  history.replaceState(null, '', location.pathname + location.search);
  showLogin(message);
}

boot();
