// The ticket view: one open ticket, kept live from its WebSocket
// subscription. It exists to compose the parts and to own the ticket's
// state; each part has one job and its own module:
//
//   ticket-thread.js    Thread: the conversation, "Load earlier", what the agent acknowledged
//   ticket-composer.js  Composer: reply / note, held sends (duplicate reply), drafts
//   ticket-fields.js    FieldsSidebar: status, priority, assignee, tags, custom fields
//   ticket-presence.js  PresenceStrip (colleagues here) and OwnPresence (what I tell them)
//   ticket-history.js   HistoryPanel: the ticket's events in words
//   field-editor.js     FieldEditor: one compare-and-set field with its conflict notice
//
// All of them reach the server only through the client package
// (`livedesk-client.js`, clients/js/).
//
// Consistency rules (contract §2, §3):
//  - `this.ticket` only ever moves forward in version: a ticket object (from an
//    HTTP answer or an event's data.ticket) older than what is shown is ignored.
//  - Every field edit is a compare-and-set PATCH {from: what the agent saw, to}.
//    A field the agent is editing is never overwritten by a live change, and a
//    live change never silently loses the agent's edit: both show a conflict
//    notice next to the field where the agent picks.
//  - Tags are only ever changed by deltas (add / remove one tag).

import { ApiError, applyTicketEvent } from './livedesk-client.js';
import { h, replaceChildren, timeEl, uid } from './dom.js';
import { FieldEditor, fieldValue } from './field-editor.js';
import { FieldsSidebar } from './ticket-fields.js';
import { Thread } from './ticket-thread.js';
import { Composer } from './ticket-composer.js';
import { PresenceStrip, OwnPresence, describeViewer } from './ticket-presence.js';
import { HistoryPanel } from './ticket-history.js';

export { STATUSES, PRIORITIES } from './ticket-fields.js';

export class TicketView {
  /**
   * @param {{client, me, fields: object[], id: number, onTicket?: (t:object)=>void,
   *          onHeld?: (info: {ticket: object, replies: object[]}) => void, loadAgents?: () => Promise<object[]>}} opts
   */
  constructor({ client, me, fields, id, onTicket, onHeld, loadAgents }) {
    this.loadAgents = loadAgents || (() => client.listAgents());
    this.client = client;
    this.me = me;
    this.fieldDefs = fields || [];
    this.id = id;
    this.onTicket = onTicket || (() => {});
    this.onHeld = onHeld || (() => {});
    this.ticket = null;
    this.agentById = undefined; // id -> agent, from loadAgents()
    this.destroyed = false;

    this.el = h('section', { class: 'ticket', dataset: { testid: 'ticket-view', ticketId: id }, 'aria-label': `Ticket ${id}` }, h('p', { class: 'loading' }, 'Loading ticket…'));

    const isDestroyed = () => this.destroyed;
    this.ownPresence = new OwnPresence({ client, id });
    this.presence = new PresenceStrip({ me });
    this.thread = new Thread({
      client,
      id,
      me,
      hasDraft: () => !!this.composer && this.composer.hasDraft(),
      isHeld: () => !!(this.composer && this.composer.held),
      onAcknowledged: () => this.composer && this.composer.onAcknowledged(),
      focusComposer: () => this.composer && this.composer.focus(),
      flash: (el) => this.flash(el),
      showNotice: (text) => this.showNotice(text),
      isDestroyed,
    });
    this.composer = null; // built with the view (build())
    this.sidebar = null;
    this.history = null;
    this.composerOpts = { client, id, me, thread: this.thread, presence: this.ownPresence, onHeld: (info) => this.onHeld(info), currentTicket: () => this.ticket, isDestroyed };
  }

  /** What colleagues see of a viewer, in words (also used by the inbox rows). */
  static describe(v) {
    return describeViewer(v);
  }

  destroy() {
    this.destroyed = true;
    this.ownPresence.destroy();
    if (this.composer) this.composer.destroy();
    this.client.unsubscribe(this.id);
  }

  async load() {
    let data;
    try {
      data = await this.client.getTicket(this.id);
    } catch (e) {
      if (this.destroyed) return;
      const msg = e instanceof ApiError && e.status === 404 ? `Ticket #${this.id} does not exist.` : `Could not load ticket #${this.id}: ${e.message}`;
      replaceChildren(this.el, h('p', { class: 'error', role: 'alert' }, msg));
      return;
    }
    if (this.destroyed) return;
    this.ticket = data.ticket;
    this.thread.init(data.messages, data.messages_before);
    this.presence.viewers = data.presence || [];
    this.build();
    this.onTicket({ ...this.ticket });
    this.client.subscribe(
      this.id,
      {
        onSnapshot: (s) => this.onSnapshot(s),
        onReset: () => this.onReset(),
        onEvent: (ev) => this.onEvent(ev),
        onPresence: (viewers) => this.setViewers(viewers),
      },
      { since: this.ticket.version },
    );
    this.ownPresence.update();
    this.thread.scrollConversation(true);
    this.composer.initDrafts(data.drafts);
  }

  // ---------------------------------------------------------------- building

  build() {
    const t = this.ticket;

    // Subject: explicit save (button or Enter), Escape reverts.
    const subjectId = uid('subject');
    this.subjectInput = h('input', { id: subjectId, type: 'text', class: 'subject-input', maxlength: 500, autocomplete: 'off', dataset: { testid: 'ticket-subject' } });
    const subjectEditor = new FieldEditor(this, {
      name: 'subject',
      label: 'Subject',
      labelFor: subjectId,
      control: h(
        'form',
        {
          class: 'subject-form',
          onsubmit: (e) => {
            e.preventDefault();
            subjectEditor.commit();
          },
        },
        this.subjectInput,
        h('button', { type: 'submit', class: 'btn', dataset: { testid: 'subject-save' } }, 'Save'),
      ),
      focusEl: this.subjectInput,
      read: () => this.subjectInput.value,
      write: (v) => {
        this.subjectInput.value = v ?? '';
      },
    });
    this.subjectInput.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && !subjectEditor.conflict) subjectEditor.write(subjectEditor.base);
    });
    subjectEditor.init(t.subject);
    this.subjectEditor = subjectEditor;

    const customer = t.customer ? `${t.customer.name || ''} <${t.customer.email || ''}>`.trim() : 'no customer';
    const head = h(
      'header',
      { class: 'ticket-head' },
      h('h2', { class: 'sr-only' }, `Ticket #${t.id}`),
      subjectEditor.el,
      h(
        'div',
        { class: 'ticket-sub' },
        h('span', {}, `#${t.id}`),
        (this.channelEl = h('span', { class: 'channel' }, t.channel || '')),
        (this.customerEl = h('span', { class: 'customer' }, customer)),
        h('span', {}, 'opened ', timeEl(t.created_at)),
        h('div', { class: 'presence-wrap' }, h('span', { class: 'sr-only' }, 'On this ticket:'), this.presence.list),
      ),
    );

    this.composer = new Composer(this.composerOpts);
    this.sidebar = new FieldsSidebar(this);
    this.history = new HistoryPanel(this);
    this.sidebar.el.append(this.history.el);
    this.loadAgents()
      .then((agents) => {
        if (this.destroyed) return;
        this.agentById = new Map(agents.map((a) => [a.id, a]));
        this.sidebar.setAgents(agents);
      })
      .catch((e) => console.warn('could not load the agents', e));

    this.notice = h('p', { class: 'ticket-notice', role: 'status', 'aria-live': 'polite', dataset: { testid: 'ticket-notice' } });

    replaceChildren(
      this.el,
      head,
      this.notice,
      h(
        'div',
        { class: 'ticket-body' },
        h(
          'div',
          { class: 'conversation-col' },
          h('div', { role: 'log', 'aria-label': 'Conversation', class: 'conversation-log' }, this.thread.el),
          this.presence.activity,
          this.composer.el,
        ),
        this.sidebar.el,
      ),
    );

    this.thread.renderMessages();
    this.presence.render();
  }

  /**
   * New field definitions (the server's `fields` push, or a reload after a
   * reconnect): rebuild the Fields section, keeping what the agent is typing
   * in a field that still exists.
   */
  setFieldDefs(defs) {
    if (!this.sidebar) {
      this.fieldDefs = Array.isArray(defs) ? defs : [];
      return;
    }
    this.sidebar.setFieldDefs(defs);
  }

  // ---------------------------------------------------------------- live state

  /** The database went back in time (a restore, a failover): forget the ticket; a snapshot follows. */
  onReset() {
    this.resetting = true;
    this.thread.reset();
    this.showNotice('This ticket was reloaded from the server (its data was restored); check what you were doing.');
  }

  onSnapshot({ ticket, messages, messages_before: before }) {
    const fresh = this.resetting;
    this.resetting = false;
    if (fresh) this.thread.messagesBefore = before ?? null;
    for (const m of messages || []) this.thread.addMessage(m, { render: false, live: !fresh });
    this.thread.renderMessages();
    if (fresh) this.thread.scrollConversation();
    this.applyTicket(ticket, null, { force: true });
  }

  onEvent(ev) {
    const data = ev.data || {};
    const by = ev.actor && ev.actor.id !== this.me.id ? ev.actor.name : null;
    switch (ev.kind) {
      case 'message.created':
        if (data.message) {
          this.thread.addMessage(data.message, { live: true });
          if (this.thread.isMine(data.message)) this.composer.onOwnMessage(data.message);
        }
        this.bumpVersion(ev.version);
        break;
      case 'tags.changed':
        if (ev.version > this.ticket.version && Array.isArray(data.tags)) {
          this.replaceTicket({ ...this.ticket, tags: data.tags, version: ev.version });
          this.sidebar.renderTags();
          this.flash(this.sidebar.tagList);
        }
        break;
      case 'ticket.updated':
      default:
        if (data.ticket) this.applyTicket(data.ticket, by);
        else if (ev.kind === 'ticket.updated' && ev.version > this.ticket.version) this.applyChanges(ev, by);
        else this.bumpVersion(ev.version);
    }
    this.history.appendHistory(ev);
  }

  /**
   * Contract v2: `ticket.updated` carries `changes` only. Apply them to the
   * ticket we hold (applyTicketEvent); a change that cannot be built locally
   * (a new customer, an assignee the directory does not know) reads the
   * ticket again.
   */
  applyChanges(ev, by) {
    const { ticket, complete } = applyTicketEvent(this.ticket, ev, { agents: this.agentById });
    if (complete) this.applyTicket(ticket, by);
    else this.refetch();
  }

  bumpVersion(v) {
    if (v > this.ticket.version) this.ticket = { ...this.ticket, version: v };
  }

  async refetch() {
    try {
      const data = await this.client.getTicket(this.id);
      if (this.destroyed) return;
      for (const m of data.messages || []) this.thread.addMessage(m, { live: true });
      this.applyTicket(data.ticket);
    } catch (e) {
      console.warn('refetch failed', e);
    }
  }

  /** Show a newer ticket state; editors being edited keep the agent's value. */
  applyTicket(t, by, { force = false } = {}) {
    if (!t || (t.version < this.ticket.version && !force)) return;
    const prev = this.ticket;
    this.ticket = t;
    this.subjectEditor.setServerValue(fieldValue(t, 'subject'), by);
    this.sidebar.applyTicket(prev, t, by);
    if (this.channelEl && this.channelEl.textContent !== (t.channel || '')) {
      this.channelEl.textContent = t.channel || '';
      this.flash(this.channelEl);
    }
    const customer = t.customer ? `${t.customer.name || ''} <${t.customer.email || ''}>`.trim() : 'no customer';
    if (this.customerEl && this.customerEl.textContent !== customer) {
      this.customerEl.textContent = customer;
      this.flash(this.customerEl);
    }
    this.onTicket({ ...t });
  }

  /**
   * Hold `t` as the ticket without the version check (a server answer that
   * is the newest by construction: the tags after a change, the real
   * assignee from a 409) and tell the application.
   */
  replaceTicket(t) {
    this.ticket = t;
    this.onTicket({ ...t });
  }

  /** A general notice at the top of the view (role=status). */
  showNotice(text) {
    if (this.notice) this.notice.textContent = text;
  }

  flash(el) {
    if (!el) return;
    el.classList.remove('flash');
    void el.offsetWidth; // restart the animation
    el.classList.add('flash');
  }

  // ---------------------------------------------------------------- presence

  setViewers(viewers) {
    this.presence.set(viewers);
    this.composer.onViewersChanged(this.presence.viewers);
  }
}
