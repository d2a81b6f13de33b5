// Notifications: what needs this agent's attention, live.
//
//   - a ticket assigned to me (by a colleague, a service or a direct SQL write),
//   - a customer message on a ticket assigned to me,
//   - my reply held because a colleague replied first (from the ticket view).
//
// Never for my own actions. Source: the inbox channel. An `inbox` frame is a
// ticket summary without the change that caused it, so for tickets assigned
// to me the center reads the events since the version it knew
// (GET /api/tickets/{id}/events?since=) and looks at kind, actor and data.
// Shown as a badge on the "Notifications" button, in the inbox heading and
// in the tab title, plus a list; read when opened from the list or when the
// ticket is opened.

import { h, replaceChildren, timeEl } from './dom.js';

const MAX_KEPT = 50;

export class NotificationCenter {
  /**
   * @param {{client: import('./livedesk-client.js').LivedeskClient, me: object,
   *          onChange?: (unread: number, center: NotificationCenter) => void}} opts
   */
  constructor({ client, me, onChange }) {
    this.client = client;
    this.me = me;
    this.onChange = onChange || (() => {});
    this.items = []; // newest first: {key, ticketId, kind, text, at, read}
    this.keys = new Set();
    this.versions = new Map(); // ticket id -> highest version looked at
    this.chains = new Map(); // ticket id -> Promise (one event read at a time per ticket)
    this.startedAt = Date.now();
    this.openTicketId = null;

    const panelId = 'notifications-panel';
    // The accessible name is the visible text plus " unread" (WCAG 2.5.3:
    // the name contains what is seen): "Notifications 2 unread".
    this.badge = h('span', { class: 'count-badge', hidden: true });
    this.badgeText = h('span', { class: 'sr-only', hidden: true }, ' unread');
    this.button = h(
      'button',
      {
        type: 'button',
        class: 'btn btn-small notif-button',
        'aria-expanded': 'false',
        'aria-controls': panelId,
        dataset: { testid: 'notifications-button' },
        onclick: () => this.toggle(),
      },
      'Notifications ',
      this.badge,
      this.badgeText,
    );
    this.list = h('ul', { class: 'notif-list', 'aria-label': 'Notifications' });
    this.panel = h(
      'section',
      {
        id: panelId,
        class: 'notif-panel',
        'aria-label': 'Notifications',
        hidden: true,
        dataset: { testid: 'notifications-panel' },
        onkeydown: (e) => {
          if (e.key === 'Escape') this.close(true);
        },
      },
      h(
        'div',
        { class: 'notif-head' },
        h('h2', {}, 'Notifications'),
        h('button', { type: 'button', class: 'btn btn-small', onclick: () => this.markAllRead() }, 'Mark all read'),
        h('button', { type: 'button', class: 'btn btn-small', onclick: () => this.close(true) }, 'Close'),
      ),
      this.list,
    );
    this.el = h('div', { class: 'notif' }, this.button, this.panel);
    this.offInbox = client.subscribeInbox((t) => this.onInboxTicket(t));
    this.render();
  }

  destroy() {
    this.offInbox();
  }

  /** Learn the versions of my tickets, so only what happens from now on notifies. */
  async prime() {
    try {
      const mine = await this.client.listTickets({ assignee: 'me', limit: 100 });
      for (const t of mine) this.seenVersion(t.id, t.version);
    } catch (e) {
      console.warn('notifications: could not list my tickets', e);
    }
  }

  /**
   * After a reconnect: inbox frames sent meanwhile are lost, so look at my
   * tickets again and read what happened on those that moved on.
   */
  async catchUp() {
    try {
      const mine = await this.client.listTickets({ assignee: 'me', limit: 100 });
      for (const t of mine) this.onInboxTicket(t);
    } catch (e) {
      console.warn('notifications: could not catch up', e);
    }
  }

  seenVersion(id, v) {
    if (!(v <= (this.versions.get(id) ?? -1))) this.versions.set(id, v);
  }

  get unread() {
    return this.items.filter((n) => !n.read).length;
  }

  /** Ticket ids with unread notifications (for the inbox rows). */
  unreadTickets() {
    return new Set(this.items.filter((n) => !n.read).map((n) => n.ticketId));
  }

  onInboxTicket(t) {
    if (!t || t.id === undefined) return;
    const known = this.versions.get(t.id);
    const mine = t.assignee && t.assignee.id === this.me.id;
    if (!mine) {
      // Not mine: nothing to tell, but remember where it stands.
      this.seenVersion(t.id, t.version);
      return;
    }
    if (known !== undefined && t.version <= known) return;
    const chain = (this.chains.get(t.id) || Promise.resolve()).then(() => this.readEvents(t, known));
    this.chains.set(t.id, chain.catch(() => {}));
  }

  /** Read what happened on one of my tickets since `known` and notify what needs me. */
  async readEvents(t, known) {
    const since = this.versions.get(t.id) ?? known ?? Math.max(0, t.version - 10);
    if (t.version <= since) return;
    let events;
    try {
      events = await this.client.listEvents(t.id, { since, limit: 100 });
    } catch (e) {
      console.warn('notifications: could not read the events of', t.id, e);
      return;
    }
    const fresh = known !== undefined || this.versions.has(t.id);
    for (const ev of events) {
      this.seenVersion(t.id, ev.version);
      // A ticket I had not seen yet: only what happened after this session began.
      if (!fresh && Date.parse(ev.at) < this.startedAt - 2000) continue;
      const actor = ev.actor;
      if (actor && actor.id === this.me.id) continue; // never my own actions
      const who = actor ? actor.name : 'A direct database write';
      const data = ev.data || {};
      const subject = t.subject ? ` “${t.subject}”` : '';
      if (ev.kind === 'ticket.updated' && data.changes && data.changes.assignee_id && Number(data.changes.assignee_id.to) === this.me.id) {
        this.add({ key: `${t.id}:${ev.version}`, ticketId: t.id, kind: 'assigned', at: ev.at, text: `${who} assigned #${t.id}${subject} to you` });
      } else if (ev.kind === 'ticket.created' && data.ticket && data.ticket.assignee && data.ticket.assignee.id === this.me.id) {
        this.add({ key: `${t.id}:${ev.version}`, ticketId: t.id, kind: 'assigned', at: ev.at, text: `${who} created #${t.id}${subject} for you` });
      } else if (ev.kind === 'message.created' && data.message && data.message.kind === 'customer') {
        const name = (data.message.author && data.message.author.name) || 'The customer';
        this.add({ key: `${t.id}:${ev.version}`, ticketId: t.id, kind: 'customer', at: ev.at, text: `${name} wrote on #${t.id}${subject}` });
      }
    }
    this.seenVersion(t.id, t.version);
  }

  /** My reply was held (409 duplicate_reply): told by the ticket view. */
  held({ ticket, replies }) {
    const names = [...new Set((replies || []).map((r) => (r.author && r.author.name) || 'A colleague'))].join(' and ') || 'A colleague';
    const newest = Math.max(0, ...(replies || []).map((r) => r.id));
    this.add({
      key: `held:${ticket.id}:${newest}`,
      ticketId: ticket.id,
      kind: 'held',
      at: new Date().toISOString(),
      text: `Your reply on #${ticket.id}${ticket.subject ? ` “${ticket.subject}”` : ''} was held: ${names} replied first`,
      read: false,
    });
  }

  add(n) {
    if (this.keys.has(n.key)) return;
    this.keys.add(n.key);
    this.items.unshift({ read: false, ...n });
    if (this.items.length > MAX_KEPT) this.items.length = MAX_KEPT;
    this.render();
  }

  /** The agent opened a ticket: its notifications are read. */
  ticketOpened(id) {
    this.openTicketId = id;
    let changed = false;
    for (const n of this.items) {
      if (n.ticketId === id && !n.read) {
        n.read = true;
        changed = true;
      }
    }
    if (changed) this.render();
  }

  markAllRead() {
    for (const n of this.items) n.read = true;
    this.render();
  }

  toggle() {
    if (this.panel.hidden) this.open();
    else this.close(true);
  }

  open() {
    this.panel.hidden = false;
    this.button.setAttribute('aria-expanded', 'true');
    (this.list.querySelector('a') || this.panel.querySelector('button'))?.focus();
  }

  close(focusButton = false) {
    if (this.panel.hidden) return;
    this.panel.hidden = true;
    this.button.setAttribute('aria-expanded', 'false');
    if (focusButton) this.button.focus();
  }

  render() {
    const unread = this.unread;
    this.badge.textContent = unread ? String(unread) : '';
    this.badge.hidden = unread === 0;
    this.badgeText.hidden = unread === 0;
    this.button.dataset.unread = String(unread);
    replaceChildren(
      this.list,
      this.items.length
        ? this.items.map((n) =>
            h(
              'li',
              { class: ['notif-item', n.read ? 'notif-read' : 'notif-unread', `notif-${n.kind}`], dataset: { kind: n.kind, ticketId: n.ticketId } },
              h(
                'a',
                {
                  href: `#/tickets/${n.ticketId}`,
                  onclick: () => {
                    n.read = true;
                    this.close();
                    this.render();
                  },
                },
                n.read ? null : h('span', { class: 'sr-only' }, 'Unread: '),
                n.text,
              ),
              timeEl(n.at),
            ),
          )
        : h('li', { class: 'muted' }, 'Nothing new.'),
    );
    this.onChange(unread, this);
  }
}
