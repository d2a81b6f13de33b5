// The ticket's history, in words ("Bob changed status new → open, 12:03"):
// read with GET /api/tickets/{id}/events the first time the panel is opened,
// then grown by every live event. It exists apart from the fields so that
// describing events (who, what, from → to) has one place.

import { h, replaceChildren, timeEl, displayValue } from './dom.js';

export class HistoryPanel {
  /**
   * @param {import('./ticket.js').TicketView} view the host: its `client`, `id`,
   *   `destroyed`, `agentById` (names for assignments) and `fieldDefs` (labels)
   */
  constructor(view) {
    this.view = view;
    this.el = this.build();
  }

  build() {
    this.historyList = h('ol', { class: 'history-list', 'aria-label': 'History', dataset: { testid: 'history' } });
    this.historyVersion = null; // the last version listed; null until loaded
    const details = h(
      'details',
      { class: 'history' },
      h('summary', {}, 'History'),
      this.historyList,
    );
    details.addEventListener('toggle', () => {
      if (details.open && this.historyVersion === null && !this.historyLoading) this.loadHistory();
    });
    return details;
  }

  async loadHistory() {
    this.historyLoading = true;
    replaceChildren(this.historyList, h('li', { class: 'muted' }, 'Loading…'));
    try {
      const all = [];
      let since = 0;
      for (;;) {
        const page = await this.view.client.listEvents(this.view.id, { since, limit: 500 });
        // A page may stop short of the limit (8 MiB): the end is an empty page.
        if (page.length === 0) break;
        all.push(...page);
        since = page[page.length - 1].version;
      }
      if (this.view.destroyed) return;
      this.historyList.replaceChildren();
      this.historyVersion = 0;
      for (const ev of all) this.appendHistory(ev);
    } catch (e) {
      replaceChildren(this.historyList, h('li', { class: 'field-error' }, `Could not load the history: ${e.message}`));
    } finally {
      this.historyLoading = false;
    }
  }

  appendHistory(ev) {
    if (this.historyVersion === null || this.historyVersion === undefined || ev.version <= this.historyVersion) return;
    this.historyVersion = ev.version;
    this.historyList.append(h('li', { class: 'history-item', dataset: { version: ev.version } }, h('span', {}, this.describeEvent(ev)), ', ', timeEl(ev.at)));
  }

  /** One event in words. */
  describeEvent(ev) {
    const who = ev.actor ? ev.actor.name : 'A direct database write';
    const d = ev.data || {};
    const show = (v) => displayValue(v);
    switch (ev.kind) {
      case 'ticket.created':
        return `${who} created the ticket`;
      case 'message.created': {
        const m = d.message || {};
        if (m.kind === 'customer') return `${(m.author && m.author.name) || 'The customer'} wrote`;
        return `${(m.author && m.author.name) || who} ${m.kind === 'note' ? 'added a note' : 'replied'}`;
      }
      case 'tags.changed': {
        const parts = [];
        if ((d.added || []).length) parts.push(`added tag${d.added.length > 1 ? 's' : ''} ${d.added.join(', ')}`);
        if ((d.removed || []).length) parts.push(`removed tag${d.removed.length > 1 ? 's' : ''} ${d.removed.join(', ')}`);
        return `${who} ${parts.join(' and ') || 'changed the tags'}`;
      }
      case 'ticket.updated': {
        const parts = Object.entries(d.changes || {}).map(([field, c]) => {
          const from = c ? c.from : null;
          const to = c ? c.to : null;
          if (field === 'assignee_id') {
            const name = (id) => (id === null || id === undefined ? 'nobody' : (this.view.agentById && this.view.agentById.get(Number(id))?.name) || `agent ${id}`);
            return to === null || to === undefined ? `unassigned ${name(from)}` : `assigned ${name(to)}`;
          }
          const label = field.startsWith('custom_fields.')
            ? (this.view.fieldDefs.find((f) => `custom_fields.${f.key}` === field)?.label || field.slice('custom_fields.'.length))
            : field.replace('_id', '');
          return `changed ${label} ${show(from)} → ${show(to)}`;
        });
        return `${who} ${parts.join(', ') || 'changed the ticket'}`;
      }
      default:
        return `${who}: ${ev.kind}`;
    }
  }
}
