// The inbox: tickets newest first, filtered by status / assignee / tag, kept
// live from `inbox` frames (a full ticket summary after every create/change).

import { h, replaceChildren, avatar, timeEl, uid } from './dom.js';
import { STATUSES, TicketView } from './ticket.js';

export class InboxView {
  /**
   * @param {{client: import('./livedesk-client.js').LivedeskClient, me: object, onOpen?: (id:number)=>void}} opts
   */
  constructor({ client, me }) {
    this.client = client;
    this.me = me;
    this.filters = { status: '', assignee: '', tag: '' };
    this.tickets = new Map(); // id -> ticket
    this.selectedId = null;
    this.loadSeq = 0;
    this.unreadTickets = new Set();
    this.unreadBadge = h('span', { class: 'count-badge', hidden: true, dataset: { testid: 'inbox-unread' } });

    const statusId = uid('f-status');
    const assigneeId = uid('f-assignee');
    const tagId = uid('f-tag');

    this.statusSel = h(
      'select',
      { id: statusId, dataset: { testid: 'filter-status' }, onchange: () => this.setFilter('status', this.statusSel.value) },
      h('option', { value: '' }, 'Any'),
      STATUSES.map((s) => h('option', { value: s }, s)),
    );
    this.assigneeSel = h(
      'select',
      { id: assigneeId, dataset: { testid: 'filter-assignee' }, onchange: () => this.setFilter('assignee', this.assigneeSel.value) },
      h('option', { value: '' }, 'Anyone'),
      h('option', { value: 'me' }, 'Me'),
      h('option', { value: 'none' }, 'Unassigned'),
    );
    this.tagInput = h('input', {
      id: tagId,
      type: 'search',
      placeholder: 'any tag',
      autocomplete: 'off',
      dataset: { testid: 'filter-tag' },
    });
    const tagForm = h(
      'form',
      {
        class: 'filter',
        onsubmit: (e) => {
          e.preventDefault();
          this.setFilter('tag', this.tagInput.value.trim().toLowerCase());
        },
      },
      h('label', { for: tagId }, 'Tag'),
      this.tagInput,
    );
    this.tagInput.addEventListener('search', () => this.setFilter('tag', this.tagInput.value.trim().toLowerCase()));
    this.tagInput.addEventListener('change', () => this.setFilter('tag', this.tagInput.value.trim().toLowerCase()));

    this.status = h('p', { class: 'inbox-status', role: 'status', 'aria-live': 'polite' });
    this.list = h('ul', { class: 'inbox-list', dataset: { testid: 'inbox-list' }, 'aria-label': 'Tickets' });

    this.el = h(
      'section',
      { class: 'inbox', 'aria-labelledby': 'inbox-title' },
      h(
        'div',
        { class: 'inbox-head' },
        h('h2', { id: 'inbox-title' }, 'Inbox ', this.unreadBadge),
        h('button', { type: 'button', class: 'btn btn-small', dataset: { testid: 'inbox-refresh' }, onclick: () => this.load() }, 'Refresh'),
      ),
      h(
        'div',
        { class: 'filters', role: 'group', 'aria-label': 'Filters' },
        h('div', { class: 'filter' }, h('label', { for: statusId }, 'Status'), this.statusSel),
        h('div', { class: 'filter' }, h('label', { for: assigneeId }, 'Assignee'), this.assigneeSel),
        tagForm,
      ),
      this.status,
      this.list,
    );

    this.offInbox = client.subscribeInbox((t) => this.onInboxTicket(t));
  }

  destroy() {
    this.offInbox();
  }

  setFilter(name, value) {
    if (this.filters[name] === value) return;
    this.filters[name] = value;
    this.load();
  }

  async load() {
    const seq = ++this.loadSeq;
    this.status.textContent = 'Loading…';
    try {
      const tickets = await this.client.listTickets({ ...this.filters, limit: 100 });
      if (seq !== this.loadSeq) return;
      this.tickets = new Map(tickets.map((t) => [t.id, t]));
      this.status.textContent = tickets.length ? '' : 'No tickets match these filters.';
      this.render();
    } catch (e) {
      if (seq !== this.loadSeq) return;
      this.status.textContent = `Could not load tickets: ${e.message}`;
    }
  }

  matches(t) {
    const f = this.filters;
    if (f.status && t.status !== f.status) return false;
    if (f.assignee === 'me' && !(t.assignee && t.assignee.id === this.me.id)) return false;
    if (f.assignee === 'none' && t.assignee) return false;
    if (f.tag && !(t.tags || []).includes(f.tag)) return false;
    return true;
  }

  /** A live summary: insert, update or drop the row. */
  onInboxTicket(t) {
    if (!t || t.id === undefined) return;
    const old = this.tickets.get(t.id);
    if (old && old.version > t.version) return; // an older summary arrived late
    if (this.matches(t)) this.tickets.set(t.id, t);
    else this.tickets.delete(t.id);
    this.status.textContent = this.tickets.size ? '' : 'No tickets match these filters.';
    this.render();
  }

  /** Called by the ticket view so the row reflects what the agent sees there. */
  updateFromTicket(t) {
    this.onInboxTicket(t);
  }

  /** Notifications: the unread count beside the heading, a mark on those rows. */
  setUnread(ticketIds, count) {
    this.unreadTickets = ticketIds;
    this.unreadBadge.textContent = count ? `${count} new` : '';
    this.unreadBadge.hidden = !count;
    this.render();
  }

  select(id) {
    this.selectedId = id;
    for (const li of this.list.children) {
      const a = li.firstElementChild;
      if (!a) continue;
      if (Number(a.dataset.id) === id) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
  }

  sorted() {
    return [...this.tickets.values()].sort((a, b) => {
      const ta = Date.parse(a.created_at) || 0;
      const tb = Date.parse(b.created_at) || 0;
      return tb - ta || b.id - a.id;
    });
  }

  render() {
    const focusedId = document.activeElement && this.list.contains(document.activeElement) ? document.activeElement.dataset.id : null;
    const rows = this.sorted().map((t) => this.row(t));
    replaceChildren(this.list, rows);
    if (focusedId) this.list.querySelector(`a[data-id="${CSS.escape(focusedId)}"]`)?.focus();
  }

  row(t) {
    const viewers = Array.isArray(t.viewers) ? t.viewers : []; // optional server extension
    return h(
      'li',
      {},
      h(
        'a',
        {
          href: `#/tickets/${t.id}`,
          class: ['inbox-row', `status-${t.status}`],
          dataset: { testid: `inbox-row-${t.id}`, id: t.id, status: t.status },
          'aria-current': t.id === this.selectedId ? 'page' : null,
        },
        h(
          'span',
          { class: 'row-top' },
          h('span', { class: 'row-id' }, `#${t.id}`),
          this.unreadTickets.has(t.id) ? h('span', { class: 'row-new' }, 'new for you') : null,
          h('span', { class: 'row-subject' }, t.subject || '(no subject)'),
        ),
        h(
          'span',
          { class: 'row-meta' },
          h('span', { class: `badge badge-status-${t.status}` }, t.status),
          t.priority && t.priority !== 'normal' ? h('span', { class: `badge badge-prio-${t.priority}` }, t.priority) : null,
          h('span', { class: 'row-channel' }, t.channel || ''),
          h('span', { class: 'row-assignee', dataset: { testid: `inbox-assignee-${t.id}` } }, t.assignee ? t.assignee.name : 'Unassigned'),
          timeEl(t.created_at),
        ),
        (t.tags || []).length ? h('span', { class: 'row-tags' }, t.tags.map((tag) => h('span', { class: 'chip chip-small' }, tag))) : null,
        viewers.length
          ? h(
              'span',
              { class: 'row-viewers' },
              viewers.map((v) => avatar(v.agent, { size: 'sm', label: `${v.agent.name} (${TicketView.describe(v)})` })),
            )
          : null,
      ),
    );
  }
}
