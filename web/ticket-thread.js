// The conversation of the open ticket: its messages in id order, "Load
// earlier messages", and what the agent has acknowledged. It exists because
// "seen" is the heart of the duplicate-reply rule (story 7) and needs one
// owner: a colleague's or customer's message that arrives while the agent
// has a draft (or the tab is hidden) is marked "New while you were writing";
// one that lands below the part of the thread the agent is reading (they
// scrolled up) is marked "New, not on screen yet". Either stays
// unacknowledged until the agent scrolls it into view with the window
// focused, or presses the notice. Replies are sent with
// seen_message_id = the newest message before the first unacknowledged one
// (`seenId()`), so the database's duplicate-reply rule (LD001) holds the send.

import { h, replaceChildren, avatar, timeEl } from './dom.js';

const NEAR_BOTTOM_PX = 120;

export class Thread {
  /**
   * @param {{client: import('./livedesk-client.js').LivedeskClient, id: number, me: {id: number},
   *          hasDraft: () => boolean, isHeld: () => boolean, onAcknowledged: () => void,
   *          focusComposer: () => void, flash: (el: Element) => void, showNotice: (text: string) => void,
   *          isDestroyed: () => boolean}} opts
   *   the composer's side of "seen" (`hasDraft`, `isHeld`, `onAcknowledged`, `focusComposer`) and the view's
   */
  constructor({ client, id, me, hasDraft, isHeld, onAcknowledged, focusComposer, flash, showNotice, isDestroyed }) {
    Object.assign(this, { client, id, me, hasDraft, isHeld, onAcknowledged, focusComposer, flash, showNotice, isDestroyed });
    /** id -> message, everything held (the newest page, plus earlier pages loaded). */
    this.messages = new Map();
    /** Messages from others that arrived while the agent had a draft, not yet acknowledged: id -> message. */
    this.unseen = new Map();
    /** Of those, the ones that arrived while the agent was not writing but landed off screen. */
    this.offScreen = new Set();
    this.messagesBefore = null;
    this.programmaticScroll = 0;
    // The list keeps list semantics; the live region is its wrapper (a role on
    // the <ol> itself would orphan its <li>s for assistive technology).
    this.el = h('ol', { class: 'conversation', 'aria-label': 'Messages', tabindex: '0', dataset: { testid: 'conversation' } });
    this.el.addEventListener('scroll', () => this.onConversationScroll(), { passive: true });
    /** "N new messages … while you were writing": placed by the composer, above it. */
    this.unseenNotice = h('div', { class: 'unseen-notice', role: 'status', hidden: true, dataset: { testid: 'unseen-notice' } });
  }

  /** The first page, from GET /api/tickets/{id} (not rendered yet). */
  init(messages, messagesBefore) {
    for (const m of messages || []) this.messages.set(m.id, m);
    this.messagesBefore = messagesBefore ?? null;
  }

  /** The database went back in time: forget every message; a snapshot follows. */
  reset() {
    this.messages.clear();
    this.unseen.clear();
    this.offScreen.clear();
    this.messagesBefore = null;
  }

  maxMessageId() {
    let max = 0;
    for (const id of this.messages.keys()) if (id > max) max = id;
    return max;
  }

  /** The seen_message_id a reply is sent with: everything before the first unacknowledged message. */
  seenId() {
    if (this.unseen.size) return Math.min(...this.unseen.keys()) - 1;
    return this.maxMessageId();
  }

  /** My message with this client_id, if it is in the thread. */
  ownMessage(clientId) {
    for (const m of this.messages.values()) if (this.isMine(m) && m.client_id === clientId) return m;
    return null;
  }

  isMine(m) {
    return !!(m && m.author && m.author.type === 'agent' && m.author.id === this.me.id);
  }

  /**
   * A message arrived (live, from a catch-up or a 409 answer). `live`: it
   * arrived while the view was open, so it may need acknowledging.
   */
  addMessage(m, { render = true, live = false } = {}) {
    if (!m || this.messages.has(m.id)) return;
    this.messages.set(m.id, m);
    // Below the part of the thread the agent is reading (scrolled up), a
    // message is not on screen: it has not been seen, draft or not.
    const near = this.isNearBottom();
    const writing = this.hasDraft() || document.visibilityState === 'hidden';
    const needsAck = live && !this.isMine(m) && m.kind !== 'note' && (writing || !near);
    if (needsAck) this.unseen.set(m.id, m);
    if (needsAck && !writing) this.offScreen.add(m.id);
    if (!render) return;
    const el = this.messageEl(m);
    this.el.querySelector('.empty')?.remove();
    // Insert in id order (usually at the end).
    const next = [...this.el.children].find((c) => Number(c.dataset.id) > m.id);
    this.el.insertBefore(el, next || null);
    // Never scroll a message the agent has not acknowledged into view by itself.
    if (this.isMine(m) || (near && !needsAck)) this.scrollConversation();
    if (needsAck) this.renderUnseenNotice();
  }

  /**
   * A restored draft was saved having seen up to `seen`: what arrived after
   * it from others was never acknowledged with it.
   */
  markUnseenAfter(seen) {
    for (const m of this.messages.values()) {
      if (m.id > seen && !this.isMine(m) && m.kind !== 'note') this.unseen.set(m.id, m);
    }
    if (this.unseen.size) this.renderMessages();
  }

  renderMessages() {
    const list = [...this.messages.values()].sort((a, b) => a.id - b.id);
    replaceChildren(
      this.el,
      this.messagesBefore ? h('li', { class: 'load-earlier' }, this.loadEarlierButton()) : null,
      list.length ? list.map((m) => this.messageEl(m)) : h('li', { class: 'muted empty' }, 'No messages yet.'),
    );
    this.renderUnseenNotice();
  }

  loadEarlierButton() {
    return h('button', { type: 'button', class: 'btn btn-small', onclick: (e) => this.loadEarlier(e.currentTarget) }, 'Load earlier messages');
  }

  /** "Load earlier": one older page from GET /api/tickets/{id}/messages?before=. */
  async loadEarlier(button) {
    if (!this.messagesBefore) return;
    button.disabled = true;
    try {
      const page = await this.client.listMessages(this.id, { before: this.messagesBefore, limit: 50 });
      if (this.isDestroyed()) return;
      const first = this.el.querySelector('.message');
      const offset = first ? first.getBoundingClientRect().top : 0;
      for (const m of page.messages || []) this.messages.set(m.id, m);
      this.messagesBefore = page.messages_before ?? null;
      this.renderMessages();
      // Keep what the agent was reading where it was.
      if (first) {
        const again = this.el.querySelector(`[data-id="${first.dataset.id}"]`);
        if (again) this.el.scrollTop += again.getBoundingClientRect().top - offset;
      }
      this.el.querySelector('.message')?.focus?.();
    } catch (e) {
      button.disabled = false;
      this.showNotice(`Could not load earlier messages: ${e.message}`);
    }
  }

  messageEl(m) {
    const author = m.author || {};
    const kindLabel = { customer: 'Customer', reply: 'Reply', note: 'Internal note' }[m.kind] || m.kind;
    const unseen = this.unseen.has(m.id);
    const mark = this.offScreen.has(m.id) ? 'New, not on screen yet' : 'New while you were writing';
    return h(
      'li',
      { class: ['message', `message-${m.kind}`, unseen ? 'message-unseen' : null], dataset: { testid: `message-${m.id}`, kind: m.kind, id: m.id }, 'aria-label': `${kindLabel} from ${author.name || 'unknown'}` },
      unseen ? h('p', { class: 'unseen-mark' }, mark) : null,
      h(
        'div',
        { class: 'message-head' },
        author.type === 'agent' ? avatar({ id: author.id, name: author.name, avatar_url: author.avatar_url }, { size: 'sm' }) : null,
        h('span', { class: 'message-author' }, author.name || (author.type === 'customer' ? 'Customer' : 'Unknown')),
        h('span', { class: `message-kind kind-${m.kind}` }, kindLabel),
        timeEl(m.created_at),
      ),
      h('div', { class: 'message-body' }, m.body || ''),
    );
  }

  /** The agent has now seen these messages (all unacknowledged ones when `ids` is omitted). */
  acknowledge(ids) {
    const list = ids ? [...ids] : [...this.unseen.keys()];
    let changed = false;
    for (const id of list) {
      if (!this.unseen.delete(id)) continue;
      this.offScreen.delete(id);
      changed = true;
      const el = this.el.querySelector(`[data-id="${id}"]`);
      if (el) {
        el.classList.remove('message-unseen');
        el.querySelector('.unseen-mark')?.remove();
      }
    }
    if (changed) {
      this.renderUnseenNotice();
      this.onAcknowledged();
    }
  }

  /** "2 new messages while you were writing — Show them". */
  renderUnseenNotice() {
    const n = this.unseen.size;
    if (!n || this.isHeld()) {
      // A held send shows the same messages in its own notice.
      this.unseenNotice.hidden = true;
      this.unseenNotice.replaceChildren();
      return;
    }
    const who = [...new Set([...this.unseen.values()].map((m) => (m.author && m.author.name) || 'Someone'))].join(' and ');
    const when = [...this.unseen.keys()].every((id) => this.offScreen.has(id)) ? 'below, not seen yet' : 'while you were writing';
    replaceChildren(
      this.unseenNotice,
      h('span', {}, `${n} new ${n === 1 ? 'message' : 'messages'} from ${who} ${when}.`),
      h('button', { type: 'button', class: 'btn btn-small', onclick: () => this.showUnseen() }, n === 1 ? 'Show it' : 'Show them'),
    );
    this.unseenNotice.hidden = false;
  }

  /** Escape in the composer: hide the notice (the messages stay unacknowledged). */
  hideUnseenNotice() {
    if (!this.unseenNotice.hidden) this.unseenNotice.hidden = true;
  }

  /** Scroll the first unacknowledged message into view and count them all as seen. */
  showUnseen() {
    const first = Math.min(...this.unseen.keys());
    const el = this.el.querySelector(`[data-id="${first}"]`);
    if (el) {
      this.programmaticScroll = Date.now();
      el.scrollIntoView({ block: 'nearest' });
      this.flash(el);
    }
    this.acknowledge();
    this.focusComposer();
  }

  /** The agent scrolled the conversation: messages now in view, with the window focused, are seen. */
  onConversationScroll() {
    if (!this.unseen.size || !document.hasFocus() || document.visibilityState !== 'visible') return;
    if (Date.now() - (this.programmaticScroll || 0) < 300) return; // our own scrolling is not reading
    const box = this.el.getBoundingClientRect();
    const inView = [];
    for (const id of this.unseen.keys()) {
      const r = this.el.querySelector(`[data-id="${id}"]`)?.getBoundingClientRect();
      if (r && r.top >= box.top - 1 && r.bottom <= box.bottom + 1) inView.push(id);
    }
    if (inView.length) this.acknowledge(inView);
  }

  isNearBottom() {
    const c = this.el;
    return c.scrollHeight - c.scrollTop - c.clientHeight < NEAR_BOTTOM_PX;
  }

  scrollConversation() {
    this.programmaticScroll = Date.now();
    this.el.scrollTop = this.el.scrollHeight;
  }
}
