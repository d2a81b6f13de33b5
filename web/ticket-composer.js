// The composer of the open ticket: reply or internal note, sending, the held
// send (a colleague's reply or a customer message came first), and drafts.
// It exists because these share one piece of state — what the agent is
// writing — and its rules: a reply is sent with the `seen_message_id` the
// thread says was acknowledged and a `client_id` per draft (a retry is
// idempotent); on `409 duplicate_reply`, or when an unread customer message
// holds the reply here, the draft stays and the messages are shown beside it
// with "Edit my reply", "Send anyway" and "Discard". Drafts are saved in the
// database as the agent types (debounced), so they survive a reload, a
// ticket switch and another device, and colleagues see "Alice has an unsent
// reply" even after Alice left (contract §5); the server deletes one when
// its message is sent, the console deletes it too.

import { ApiError } from './livedesk-client.js';
import { h, replaceChildren, avatar, timeEl, uid, randomId, relativeTime } from './dom.js';

/** "typing" lasts this long after the last key; then the draft marker says "has a draft". */
const TYPING_IDLE_MS = 5000;
/** Draft saving: after this pause in typing, and at least this often while typing. */
const DRAFT_DEBOUNCE_MS = 600;
const DRAFT_MAX_WAIT_MS = 3000;

export class Composer {
  /**
   * @param {{client: import('./livedesk-client.js').LivedeskClient, id: number, me: {id: number},
   *          thread: import('./ticket-thread.js').Thread, presence: import('./ticket-presence.js').OwnPresence,
   *          onHeld: (info: {ticket: object, replies: object[]}) => void, currentTicket: () => object,
   *          isDestroyed: () => boolean}} opts
   */
  constructor({ client, id, me, thread, presence, onHeld, currentTicket, isDestroyed }) {
    Object.assign(this, { client, id, me, thread, presence, onHeld, currentTicket, isDestroyed });
    this.held = null; // {reason: 'reply'|'customer', messages}
    this.typingTimer = null;
    /** The last send that got no answer: {clientId, kind, body}. Only the same kind and body retry with its client_id. */
    this.attempt = null;
    this.sending = false;
    this.savedDraft = null; // {kind, body, seen} as stored on the server, as far as we know
    this.draftChain = Promise.resolve();
    this.draftTimer = null;
    this.draftDirtySince = 0;
    this.otherDrafts = [];
    this.el = this.build();
  }

  build() {
    const bodyId = uid('composer-body');
    const kindId = uid('composer-kind');
    this.kindSelect = h(
      'select',
      { id: kindId, dataset: { testid: 'composer-kind' }, onchange: () => this.updateComposerKind() },
      h('option', { value: 'reply' }, 'Reply to customer'),
      h('option', { value: 'note' }, 'Internal note'),
    );
    this.bodyInput = h('textarea', { id: bodyId, rows: 4, dataset: { testid: 'composer-body' }, placeholder: 'Write a reply…  (Ctrl+Enter sends)' });
    this.sendButton = h('button', { type: 'submit', class: 'btn btn-primary', dataset: { testid: 'composer-send' } }, 'Send reply');
    this.composerError = h('p', { class: 'field-error', role: 'alert', hidden: true, dataset: { testid: 'composer-error' } });
    this.duplicateBox = h('div', { class: 'duplicate', role: 'alert', hidden: true, dataset: { testid: 'duplicate-notice' } });
    this.draftStatus = h('p', { class: 'draft-status muted', role: 'status', 'aria-live': 'polite', dataset: { testid: 'draft-status' } });
    this.draftsList = h('ul', { class: 'drafts-list', 'aria-label': 'Unsent drafts of colleagues' });
    this.draftsBox = h('div', { class: 'drafts-box', role: 'status', hidden: true, dataset: { testid: 'colleague-drafts' } }, this.draftsList);

    this.bodyInput.addEventListener('input', () => this.onTyping());
    this.bodyInput.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        this.send();
      }
    });

    return h(
      'form',
      {
        class: 'composer',
        'aria-label': 'Composer',
        onsubmit: (e) => {
          e.preventDefault();
          this.send();
        },
        onkeydown: (e) => {
          if (e.key === 'Escape') this.closeNotices();
        },
      },
      this.draftsBox,
      this.thread.unseenNotice,
      this.duplicateBox,
      h('div', { class: 'composer-row' }, h('label', { for: kindId }, 'Type'), this.kindSelect),
      h('label', { for: bodyId, class: 'sr-only' }, 'Message'),
      this.bodyInput,
      this.composerError,
      h('div', { class: 'composer-actions' }, this.draftStatus, this.sendButton),
    );
  }

  /** The view is going away (ticket switch, logout). */
  destroy() {
    clearTimeout(this.typingTimer);
    clearInterval(this.draftsClock);
    clearTimeout(this.draftsRefresh);
    if (this.onPageHide) window.removeEventListener('pagehide', this.onPageHide);
    // A ticket switch: what was typed since the last save is saved now.
    if (this.draftTimer) this.flushDraftOnUnload();
  }

  hasDraft() {
    return !!this.bodyInput.value.trim();
  }

  focus() {
    this.bodyInput.focus();
  }

  /** The thread counted messages as seen: a held send whose messages are all seen is released; the draft's seen id moved. */
  onAcknowledged() {
    if (!this.thread.unseen.size && this.held) this.hideHeld();
    this.scheduleDraftSave();
  }

  updateComposerKind() {
    const note = this.kindSelect.value === 'note';
    this.el.classList.toggle('composer-note', note);
    this.sendButton.textContent = note ? 'Add note' : 'Send reply';
    this.bodyInput.placeholder = note ? 'Write an internal note…  (Ctrl+Enter sends)' : 'Write a reply…  (Ctrl+Enter sends)';
    this.scheduleDraftSave();
  }

  /** Escape: close the composer's notices (a held send stays held until acknowledged). */
  closeNotices() {
    if (this.held) return this.editMyReply();
    this.thread.hideUnseenNotice();
  }

  onTyping() {
    this.presence.noteActivity();
    clearTimeout(this.typingTimer);
    this.scheduleDraftSave();
    if (!this.bodyInput.value.trim()) {
      this.presence.setTyping(false);
      return;
    }
    this.presence.setTyping(true);
    this.typingTimer = setTimeout(() => this.presence.setTyping(false), TYPING_IDLE_MS);
  }

  // ---------------------------------------------------------------- sending

  /**
   * Send the draft, stating as seen exactly what the agent has seen
   * (`Thread.seenId()`: everything before the first message not yet
   * acknowledged), so the database refuses a reply past a colleague's
   * unseen one (409 duplicate_reply).
   */
  async send() {
    const body = this.bodyInput.value;
    if (!body.trim() || this.sending) return;
    const kind = this.kindSelect.value;
    if (kind === 'reply') {
      // Console rule: a customer message the agent has not read holds the
      // reply. The notice shows everything not seen yet, a colleague's reply
      // too: "Send anyway" counts all of it as read.
      const unseen = [...this.thread.unseen.values()];
      if (unseen.some((m) => m.kind === 'customer')) return this.showHeld('customer', unseen);
    }
    // A retry of a send that got no answer keeps its client_id (the server
    // returns the message if the first one went through); an edited body or
    // another kind is a new message, with a new client_id.
    const retry = this.attempt && this.attempt.kind === kind && this.attempt.body === body;
    const clientId = retry ? this.attempt.clientId : randomId();
    const msg = { kind, body, client_id: clientId };
    if (kind === 'reply') msg.seen_message_id = this.thread.seenId();
    this.attempt = { clientId, kind, body };
    this.sending = true;
    this.sendButton.disabled = true;
    this.composerError.hidden = true;
    try {
      await this.beforeSend();
      const m = await this.client.postMessage(this.id, msg);
      this.thread.addMessage(m);
      this.sent();
    } catch (e) {
      if (e instanceof ApiError && e.code === 'duplicate_reply') {
        const replies = e.details.replies || [];
        this.showHeld('reply', replies);
        this.onHeld({ ticket: this.currentTicket(), replies });
      } else {
        // No answer (or another error): it may still have been stored; its
        // live event says so (`onOwnMessage`), before or after this.
        this.composerError.textContent = `Not sent (your draft is kept): ${e.message}`;
        this.composerError.hidden = false;
      }
    } finally {
      this.sending = false;
      this.sendButton.disabled = false;
    }
    const arrived = this.attempt && this.thread.ownMessage(this.attempt.clientId);
    if (arrived) this.onOwnMessage(arrived);
  }

  /** The draft went out: clear the composer. */
  sent() {
    this.bodyInput.value = '';
    this.attempt = null;
    this.composerError.hidden = true;
    this.hideHeld();
    clearTimeout(this.typingTimer);
    this.presence.setTyping(false);
    this.afterSend();
    this.bodyInput.focus();
  }

  /**
   * One of my messages arrived live. If it is the send that got no answer,
   * it did go through: unchanged, the composer is cleared as if answered;
   * edited since, the edit stays in the composer and is a new message.
   */
  onOwnMessage(m) {
    if (!this.attempt || !m || m.client_id !== this.attempt.clientId || this.sending) return;
    if (this.bodyInput.value === this.attempt.body && this.kindSelect.value === this.attempt.kind) {
      this.sent();
      return;
    }
    this.attempt = null;
    this.composerError.textContent = 'Your earlier version was sent after all (it is in the thread). Sending now adds a new message.';
    this.composerError.hidden = false;
  }

  /**
   * The send was held: `reason` 'reply' (a colleague replied first: 409
   * duplicate_reply) or 'customer' (the customer wrote meanwhile). The
   * messages are shown beside the kept draft with "Edit my reply", "Send
   * anyway" and "Discard".
   */
  showHeld(reason, messages) {
    for (const r of messages) this.thread.addMessage(r, { live: true }); // part of the conversation too
    this.held = { reason, messages };
    const names = [...new Set(messages.map((r) => (r.author && r.author.name) || (reason === 'customer' ? 'The customer' : 'A colleague')))];
    const who = names.length ? names.join(' and ') : 'A colleague';
    const title =
      reason === 'customer'
        ? [h('strong', {}, `${who} wrote while you were writing:`), ' your reply is held until you have read it. Your draft is kept below.']
        : [h('strong', {}, `${who} just replied:`), ' your reply was not sent. Your draft is kept below.'];
    replaceChildren(
      this.duplicateBox,
      h('p', { class: 'duplicate-title', id: uid('held-title') }, title),
      messages.map((r) =>
        h(
          'blockquote',
          { class: reason === 'customer' ? 'duplicate-reply held-customer' : 'duplicate-reply', dataset: { testid: `duplicate-reply-${r.id}`, id: r.id } },
          h('div', { class: 'message-head' }, h('span', { class: 'message-author' }, (r.author && r.author.name) || ''), timeEl(r.created_at)),
          h('div', { class: 'message-body' }, r.body || ''),
        ),
      ),
      h(
        'div',
        { class: 'duplicate-actions' },
        h('button', { type: 'button', class: 'btn btn-small', dataset: { testid: 'discard-draft' }, onclick: () => this.discardDraft() }, 'Discard'),
        h('button', { type: 'button', class: 'btn btn-small', dataset: { testid: 'edit-reply' }, onclick: () => this.editMyReply() }, 'Edit my reply'),
        h('button', { type: 'button', class: 'btn btn-small btn-primary', dataset: { testid: 'send-anyway' }, onclick: () => this.sendAnyway() }, 'Send anyway'),
      ),
    );
    this.duplicateBox.hidden = false;
    this.thread.renderUnseenNotice();
  }

  hideHeld() {
    this.held = null;
    this.duplicateBox.hidden = true;
    this.duplicateBox.replaceChildren();
    this.thread.renderUnseenNotice();
  }

  /** The agent read what was shown: it counts as seen; back to the kept draft. */
  editMyReply() {
    const shown = (this.held && this.held.messages) || [];
    this.hideHeld();
    this.thread.acknowledge(shown.map((m) => m.id));
    this.bodyInput.focus();
  }

  discardDraft() {
    const shown = (this.held && this.held.messages) || [];
    this.bodyInput.value = '';
    this.attempt = null;
    this.hideHeld();
    this.thread.acknowledge(shown.map((m) => m.id));
    this.presence.setTyping(false);
    this.scheduleDraftSave();
    this.bodyInput.focus();
  }

  /**
   * The agent read what was shown and sends as it is. Only what was shown
   * counts as seen: a message that arrived while the notice was open is
   * still unseen, so a customer's holds the send again and a colleague's
   * reply makes the database refuse it.
   */
  sendAnyway() {
    const shown = (this.held && this.held.messages) || [];
    this.thread.acknowledge(shown.map((m) => m.id));
    this.hideHeld();
    return this.send();
  }

  // ---------------------------------------------------------------- drafts

  /** Restore my draft (if the composer is still empty) and show colleagues' drafts. */
  async initDrafts(drafts) {
    this.otherDrafts = drafts || [];
    this.renderDrafts();
    this.draftsClock = setInterval(() => this.renderDrafts(), 30_000);
    this.onPageHide = () => this.flushDraftOnUnload();
    window.addEventListener('pagehide', this.onPageHide);
    if (!this.otherDrafts.some((d) => d.agent && d.agent.id === this.me.id)) return;
    let draft;
    try {
      draft = await this.client.getDraft(this.id);
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 404)) this.setDraftStatus(`Your saved draft could not be loaded: ${e.message}`);
      return;
    }
    if (this.isDestroyed() || !draft || this.bodyInput.value) return;
    this.kindSelect.value = draft.kind === 'note' ? 'note' : 'reply';
    this.updateComposerKind();
    this.bodyInput.value = draft.body || '';
    this.savedDraft = { kind: draft.kind, body: draft.body };
    // What arrived after the draft was last saved was never acknowledged with it.
    this.thread.markUnseenAfter(Number(draft.seen_message_id ?? this.thread.maxMessageId()));
    this.setDraftStatus(`Draft restored (saved ${relativeTime(draft.updated_at)})`);
  }

  setDraftStatus(text) {
    this.draftStatus.textContent = text;
  }

  /** The draft changed: save it soon (after a pause in typing, at least every few seconds). */
  scheduleDraftSave() {
    if (this.isDestroyed()) return;
    clearTimeout(this.draftTimer);
    const now = Date.now();
    if (!this.draftDirtySince) this.draftDirtySince = now;
    const wait = Math.max(0, Math.min(DRAFT_DEBOUNCE_MS, this.draftDirtySince + DRAFT_MAX_WAIT_MS - now));
    this.draftTimer = setTimeout(() => this.saveDraftNow(), wait);
  }

  /** What the composer holds as a draft to store, or null (nothing to keep). */
  wantedDraft() {
    const body = this.bodyInput.value;
    return body.trim() ? { kind: this.kindSelect.value, body, seen_message_id: this.thread.seenId() } : null;
  }

  /** Save (or delete) the draft now, after any save in flight; resolves when done. */
  saveDraftNow({ keepalive = false } = {}) {
    clearTimeout(this.draftTimer);
    this.draftTimer = null;
    this.draftDirtySince = 0;
    const want = this.wantedDraft();
    this.draftChain = this.draftChain.then(async () => {
      const have = this.savedDraft;
      const same = want ? have && have.kind === want.kind && have.body === want.body && have.seen === want.seen_message_id : !have;
      if (same) return;
      try {
        if (want) await this.client.putDraft(this.id, want, { keepalive });
        else await this.client.deleteDraft(this.id, { keepalive });
        this.savedDraft = want ? { kind: want.kind, body: want.body, seen: want.seen_message_id } : null;
        if (!this.isDestroyed()) this.setDraftStatus(want ? 'Draft saved' : '');
      } catch (e) {
        if (!this.isDestroyed()) this.setDraftStatus(`Draft not saved: ${e.message}`);
      }
    });
    return this.draftChain;
  }

  /**
   * The page is going away (reload, closed tab): send what is not saved yet
   * now, with `keepalive`, outside the chain (a promise continuation may
   * never run once the page is gone).
   */
  flushDraftOnUnload() {
    if (!this.draftTimer) return;
    clearTimeout(this.draftTimer);
    this.draftTimer = null;
    const want = this.wantedDraft();
    const request = want ? this.client.putDraft(this.id, want, { keepalive: true }) : this.client.deleteDraft(this.id, { keepalive: true });
    request.catch(() => {});
  }

  /** Before a send: no save may land after it (it would bring the sent draft back). */
  async beforeSend() {
    clearTimeout(this.draftTimer);
    this.draftTimer = null;
    this.draftDirtySince = 0;
    await this.draftChain;
  }

  /** Sent: the server dropped the draft of that kind; drop whatever is left too. */
  afterSend() {
    this.savedDraft = { kind: '-', body: '-' }; // unknown: make the next save a DELETE
    this.setDraftStatus('');
    this.saveDraftNow();
  }

  /** Viewers changed: if someone's draft marker changed or a viewer left, reload who has a draft. */
  onViewersChanged(viewers) {
    const sig = viewers
      .map((v) => `${v.agent && v.agent.id}:${v.draft || ''}`)
      .sort()
      .join(',');
    if (sig === this.viewersSig) return;
    const first = this.viewersSig === undefined;
    this.viewersSig = sig;
    if (first) return;
    clearTimeout(this.draftsRefresh);
    this.draftsRefresh = setTimeout(async () => {
      try {
        const list = await this.client.listDrafts(this.id);
        if (this.isDestroyed()) return;
        this.otherDrafts = list;
        this.renderDrafts();
      } catch (e) {
        console.warn('could not reload the drafts of the ticket', e);
      }
    }, 200);
  }

  /** "Alice Archer has an unsent reply (2 min ago)" for each colleague's draft. */
  renderDrafts() {
    const others = (this.otherDrafts || []).filter((d) => d.agent && d.agent.id !== this.me.id);
    replaceChildren(
      this.draftsList,
      others.map((d) =>
        h(
          'li',
          { class: 'draft-item', dataset: { testid: `draft-of-${d.agent.id}` } },
          avatar(d.agent, { size: 'sm' }),
          h('span', {}, `${d.agent.name} has an unsent ${d.kind === 'note' ? 'note' : 'reply'} (${relativeTime(d.updated_at)})`),
        ),
      ),
    );
    this.draftsBox.hidden = others.length === 0;
  }
}
