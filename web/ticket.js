// The ticket view: fields, assignee, tags, conversation, composer and presence,
// all kept live from the ticket's WebSocket subscription.
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
import { h, replaceChildren, avatar, timeEl, sameValue, displayValue, uid, randomId, relativeTime } from './dom.js';

export const STATUSES = ['new', 'open', 'pending', 'resolved', 'closed'];
export const PRIORITIES = ['low', 'normal', 'high', 'urgent'];
/** "typing" lasts this long after the last key; then the draft marker says "has a draft". */
const TYPING_IDLE_MS = 5000;
/** No input for this long: idle (contract §6). */
const IDLE_AFTER_MS = 5 * 60 * 1000;
const NEAR_BOTTOM_PX = 120;
/** Draft saving: after this pause in typing, and at least this often while typing. */
const DRAFT_DEBOUNCE_MS = 600;
const DRAFT_MAX_WAIT_MS = 3000;
/** What counts as the agent being at the keyboard. */
const ACTIVITY_EVENTS = ['keydown', 'pointerdown', 'wheel', 'touchstart'];

/** Read a PATCH field name (`subject`, `custom_fields.plan`) from a ticket. */
function fieldValue(ticket, name) {
  if (name.startsWith('custom_fields.')) {
    const v = (ticket.custom_fields || {})[name.slice('custom_fields.'.length)];
    return v === undefined ? null : v;
  }
  const v = ticket[name];
  return v === undefined ? null : v;
}

function normalizeOptions(options) {
  let list = options;
  if (list && !Array.isArray(list)) list = list.values || list.choices || list.options || [];
  return (list || []).map((o) => (o && typeof o === 'object' ? { value: String(o.value ?? o.key ?? o.label), label: String(o.label ?? o.value) } : { value: String(o), label: String(o) }));
}

/**
 * One editable field: its control, the value the agent saw (`base`), and the
 * conflict notice (data-testid="field-conflict-<name>").
 */
class FieldEditor {
  /**
   * @param {TicketView} view
   * @param {{name: string, label: string, control: HTMLElement, labelFor?: string, read: () => any,
   *          write: (v:any) => void, norm?: (v:any) => any, commitOnChange?: boolean, focusEl?: HTMLElement,
   *          labelTag?: string}} spec
   */
  constructor(view, spec) {
    Object.assign(this, spec);
    this.view = view;
    this.norm = spec.norm || ((v) => v);
    this.base = null; // raw server value the agent saw (the PATCH `from`)
    this.conflict = null; // {expected, current, by}
    this.busy = false;
    this.conflictEl = h('div', { class: 'conflict', role: 'alert', hidden: true, dataset: { testid: `field-conflict-${spec.name}` } });
    this.errorEl = h('p', { class: 'field-error', role: 'alert', hidden: true });
    const labelEl = spec.labelTag === 'legend' ? null : h('label', { for: spec.labelFor, class: 'field-label' }, spec.label);
    this.el = h('div', { class: 'field', dataset: { field: spec.name } }, labelEl, spec.control, this.errorEl, this.conflictEl);
    if (spec.commitOnChange) spec.control.addEventListener('change', () => this.commit());
  }

  eq(a, b) {
    return sameValue(this.norm(a), this.norm(b));
  }

  dirty() {
    return !this.eq(this.read(), this.base);
  }

  /** First render. */
  init(value) {
    this.base = value;
    this.write(value);
  }

  /** The server's value changed (or was confirmed); `by` names who changed it, if known. */
  setServerValue(v, by) {
    if (this.busy) return; // settled when the request answers
    if (this.eq(v, this.read())) {
      this.base = v;
      this.clearConflict();
      return;
    }
    if (this.conflict) {
      this.conflict = { ...this.conflict, current: v, by: by || this.conflict.by };
      this.renderConflict();
      return;
    }
    if (this.eq(v, this.base)) return; // unchanged on the server; the agent's edit stays
    if (this.dirty()) {
      // The agent is editing this very field: show, don't overwrite.
      this.showConflict({ expected: this.base, current: v, by });
      return;
    }
    this.base = v;
    this.write(v);
    this.view.flash(this.el);
  }

  /** Send the agent's value as a compare-and-set from `from` (default: what the agent saw). */
  async commit(from = this.base, to = this.read()) {
    if (this.busy) return;
    this.errorEl.hidden = true;
    if (this.eq(from, to) && !this.conflict) return;
    this.busy = true;
    this.el.classList.add('saving');
    let ok = false;
    try {
      const ticket = await this.view.client.patchTicket(this.view.id, { [this.name]: { from, to } });
      ok = true;
      this.busy = false;
      this.base = to;
      this.clearConflict();
      this.view.applyTicket(ticket);
    } catch (e) {
      this.busy = false;
      if (e instanceof ApiError && e.code === 'field_conflict') {
        const fields = e.details.fields || {};
        const c = fields[this.name] || fields[this.name.replace(/^custom_fields\./, '')] || Object.values(fields)[0];
        this.showConflict({ expected: c ? c.expected : from, current: c ? c.current : null });
      } else {
        this.errorEl.textContent = `Not saved: ${e.message}`;
        this.errorEl.hidden = false;
      }
    } finally {
      this.busy = false;
      this.el.classList.remove('saving');
    }
    // Reconcile with the newest server state seen meanwhile (events may have
    // arrived while the request was in flight).
    if (ok) this.setServerValue(fieldValue(this.view.ticket, this.name));
  }

  showConflict(c) {
    this.conflict = c;
    this.renderConflict();
  }

  renderConflict() {
    const c = this.conflict;
    if (!c) return;
    const mine = this.read();
    const name = this.label;
    replaceChildren(
      this.conflictEl,
      h(
        'p',
        {},
        h('strong', {}, `${name} was changed${c.by ? ` by ${c.by}` : ' by a colleague'} while you were editing. `),
        'It is now ',
        h('q', { class: 'conflict-current', dataset: { testid: `conflict-current-${this.name}` } }, displayValue(c.current)),
        '; you saw ',
        h('q', {}, displayValue(c.expected)),
        ' and want ',
        h('q', {}, displayValue(mine)),
        '.',
      ),
      h(
        'div',
        { class: 'conflict-actions' },
        h(
          'button',
          { type: 'button', class: 'btn btn-small btn-primary', dataset: { testid: `conflict-keep-mine-${this.name}` }, onclick: () => this.commit(this.conflict.current, this.read()) },
          'Use mine',
        ),
        h(
          'button',
          { type: 'button', class: 'btn btn-small', dataset: { testid: `conflict-use-theirs-${this.name}` }, onclick: () => this.takeTheirs() },
          'Keep theirs',
        ),
      ),
    );
    this.conflictEl.hidden = false;
    this.el.classList.add('has-conflict');
  }

  takeTheirs() {
    const current = this.conflict ? this.conflict.current : fieldValue(this.view.ticket, this.name);
    this.base = current;
    this.write(current);
    this.clearConflict();
    (this.focusEl || this.control).focus?.();
  }

  clearConflict() {
    this.conflict = null;
    this.conflictEl.hidden = true;
    this.conflictEl.replaceChildren();
    this.el.classList.remove('has-conflict');
  }
}

export class TicketView {
  /**
   * @param {{client, me, fields: object[], id: number, onTicket?: (t:object)=>void}} opts
   */
  constructor({ client, me, fields, id, onTicket, onHeld, loadAgents }) {
    this.loadAgents = loadAgents || (() => client.listAgents());
    this.client = client;
    this.me = me;
    this.fieldDefs = fields || [];
    this.id = id;
    this.onTicket = onTicket || (() => {});
    this.onHeld = onHeld || (() => {});
    /** Messages from others that arrived while the agent had a draft, not yet acknowledged: id -> message. */
    this.unseen = new Map();
    this.held = null; // {reason: 'reply'|'customer', messages}
    this.typing = false;
    this.idleByTime = false;
    this.lastActivity = Date.now();
    this.messagesBefore = null;
    this.savedDraft = null; // {kind, body, seen} as stored on the server, as far as we know
    this.draftChain = Promise.resolve();
    this.draftTimer = null;
    this.draftDirtySince = 0;
    this.otherDrafts = [];
    this.ticket = null;
    this.messages = new Map();
    this.viewers = [];
    this.editors = new Map();
    this.typingTimer = null;
    this.draftClientId = null;
    this.destroyed = false;

    this.el = h('section', { class: 'ticket', dataset: { testid: 'ticket-view', ticketId: id }, 'aria-label': `Ticket ${id}` }, h('p', { class: 'loading' }, 'Loading ticket…'));

    this.onVisibility = () => this.updateOwnPresence();
    this.onActivity = () => this.noteActivity();
    document.addEventListener('visibilitychange', this.onVisibility);
    for (const type of ACTIVITY_EVENTS) document.addEventListener(type, this.onActivity, { passive: true, capture: true });
    this.idleTimer = setInterval(() => {
      const idle = Date.now() - this.lastActivity >= IDLE_AFTER_MS;
      if (idle !== this.idleByTime) {
        this.idleByTime = idle;
        this.updateOwnPresence();
      }
    }, 10_000);
  }

  destroy() {
    this.destroyed = true;
    clearTimeout(this.typingTimer);
    clearInterval(this.idleTimer);
    document.removeEventListener('visibilitychange', this.onVisibility);
    for (const type of ACTIVITY_EVENTS) document.removeEventListener(type, this.onActivity, { capture: true });
    this.onDestroy();
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
    for (const m of data.messages || []) this.messages.set(m.id, m);
    this.messagesBefore = data.messages_before ?? null;
    this.viewers = data.presence || [];
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
    this.updateOwnPresence();
    this.scrollConversation(true);
    this.initDrafts(data.drafts);
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
    this.addEditor(subjectEditor, t.subject);

    this.presenceList = h('ul', { class: 'presence-bar', dataset: { testid: 'presence-bar' }, 'aria-label': 'Colleagues on this ticket' });
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
        h('div', { class: 'presence-wrap' }, h('span', { class: 'sr-only' }, 'On this ticket:'), this.presenceList),
      ),
    );

    // Conversation and composer.
    // The list keeps list semantics; the live region is its wrapper (a role on
    // the <ol> itself would orphan its <li>s for assistive technology).
    this.conversation = h('ol', { class: 'conversation', 'aria-label': 'Messages', tabindex: '0', dataset: { testid: 'conversation' } });
    this.conversation.addEventListener('scroll', () => this.onConversationScroll(), { passive: true });
    this.typingIndicator = h('p', { class: 'typing-indicator', 'aria-live': 'polite', dataset: { testid: 'typing-indicator' } });
    const composer = this.buildComposer();

    // Side panel: properties.
    const side = h(
      'aside',
      { class: 'ticket-side', 'aria-label': 'Ticket properties' },
      this.buildSelectEditor('status', 'Status', STATUSES, t.status, 'ticket-status'),
      this.buildSelectEditor('priority', 'Priority', PRIORITIES, t.priority, 'ticket-priority'),
      this.buildAssignee(),
      this.buildTags(),
      (this.customFieldsSlot = h('div', { class: 'custom-fields-slot' }, this.buildCustomFields())),
      this.buildHistory(),
    );

    this.notice = h('p', { class: 'ticket-notice', role: 'status', 'aria-live': 'polite', dataset: { testid: 'ticket-notice' } });

    replaceChildren(
      this.el,
      head,
      this.notice,
      h('div', { class: 'ticket-body' }, h('div', { class: 'conversation-col' }, h('div', { role: 'log', 'aria-label': 'Conversation', class: 'conversation-log' }, this.conversation), this.typingIndicator, composer), side),
    );

    this.renderMessages();
    this.renderAssignee();
    this.renderTags();
    this.renderPresence();
  }

  addEditor(editor, value) {
    editor.init(value);
    this.editors.set(editor.name, editor);
  }

  buildSelectEditor(name, label, values, value, testid) {
    const id = uid(name);
    const select = h('select', { id, dataset: { testid } }, values.map((v) => h('option', { value: v }, v)));
    const editor = new FieldEditor(this, {
      name,
      label,
      labelFor: id,
      control: select,
      commitOnChange: true,
      read: () => select.value,
      write: (v) => {
        if (v !== null && v !== undefined && ![...select.options].some((o) => o.value === v)) select.append(h('option', { value: v }, v));
        select.value = v ?? '';
      },
    });
    this.addEditor(editor, value);
    return editor.el;
  }

  /**
   * New field definitions (the server's `fields` push, or a reload after a
   * reconnect): rebuild the Fields section, keeping what the agent is typing
   * in a field that still exists.
   */
  setFieldDefs(defs) {
    const list = Array.isArray(defs) ? defs : [];
    if (!this.customFieldsSlot) {
      this.fieldDefs = list;
      return;
    }
    if (JSON.stringify(list) === JSON.stringify(this.fieldDefs)) return;
    const kept = new Map();
    for (const [name, editor] of [...this.editors]) {
      if (!name.startsWith('custom_fields.')) continue;
      if (editor.dirty()) kept.set(name, { value: editor.read(), base: editor.base });
      this.editors.delete(name);
    }
    this.fieldDefs = list;
    replaceChildren(this.customFieldsSlot, this.buildCustomFields());
    for (const [name, k] of kept) {
      const editor = this.editors.get(name);
      if (!editor) continue;
      editor.write(k.value);
      editor.base = k.base;
    }
    this.flash(this.customFieldsSlot);
  }

  buildCustomFields() {
    const cf = this.ticket.custom_fields || {};
    const defined = new Set(this.fieldDefs.map((d) => d.key));
    const editors = this.fieldDefs.map((def) => {
      const editor = this.buildFieldEditor(def);
      this.addEditor(editor, cf[def.key] === undefined ? null : cf[def.key]);
      return editor.el;
    });
    // Values without a definition (e.g. written before a definition changed): read-only.
    const extra = Object.keys(cf)
      .filter((k) => !defined.has(k))
      .map((k) => h('div', { class: 'field' }, h('span', { class: 'field-label' }, k), h('span', { dataset: { testid: `field-${k}` } }, displayValue(cf[k]))));
    this.unknownFieldsEl = h('div', {}, extra);
    if (!editors.length && !extra.length) return null;
    return h('section', { class: 'custom-fields', 'aria-labelledby': 'cf-title' }, h('h3', { id: 'cf-title' }, 'Fields'), editors, this.unknownFieldsEl);
  }

  buildFieldEditor(def) {
    const name = `custom_fields.${def.key}`;
    const label = def.label || def.key;
    const id = uid(`cf-${def.key}`);
    const testid = `field-${def.key}`;
    const common = { name, label, labelFor: id, commitOnChange: true };
    switch (def.type) {
      case 'number': {
        const input = h('input', { id, type: 'number', step: 'any', dataset: { testid } });
        return new FieldEditor(this, {
          ...common,
          control: input,
          read: () => (input.value === '' ? null : Number(input.value)),
          write: (v) => {
            input.value = v === null || v === undefined ? '' : String(v);
          },
          norm: (v) => (v === null || v === undefined || v === '' ? null : Number(v)),
        });
      }
      case 'date': {
        const input = h('input', { id, type: 'date', dataset: { testid } });
        return new FieldEditor(this, {
          ...common,
          control: input,
          read: () => input.value || null,
          write: (v) => {
            input.value = v ? String(v).slice(0, 10) : '';
          },
          norm: (v) => (v ? String(v).slice(0, 10) : null),
        });
      }
      case 'select': {
        const opts = normalizeOptions(def.options);
        const select = h('select', { id, dataset: { testid } }, h('option', { value: '' }, '—'), opts.map((o) => h('option', { value: o.value }, o.label)));
        return new FieldEditor(this, {
          ...common,
          control: select,
          read: () => select.value || null,
          write: (v) => {
            if (v !== null && v !== undefined && ![...select.options].some((o) => o.value === String(v))) select.append(h('option', { value: String(v) }, String(v)));
            select.value = v === null || v === undefined ? '' : String(v);
          },
        });
      }
      case 'multiselect': {
        const opts = normalizeOptions(def.options);
        const boxes = opts.map((o) => h('input', { type: 'checkbox', value: o.value, id: uid(`cf-${def.key}`), dataset: { testid: `field-${def.key}-${o.value}` } }));
        const fieldset = h(
          'fieldset',
          { class: 'multiselect', dataset: { testid } },
          h('legend', { class: 'field-label' }, label),
          opts.map((o, i) => h('label', { class: 'check' }, boxes[i], ' ', o.label)),
        );
        return new FieldEditor(this, {
          ...common,
          labelTag: 'legend',
          labelFor: undefined,
          control: fieldset,
          focusEl: boxes[0],
          read: () => boxes.filter((b) => b.checked).map((b) => b.value),
          write: (v) => {
            const set = new Set((Array.isArray(v) ? v : []).map(String));
            for (const b of boxes) b.checked = set.has(b.value);
          },
          norm: (v) => (Array.isArray(v) ? v.map(String) : []),
        });
      }
      case 'checkbox': {
        const input = h('input', { id, type: 'checkbox', dataset: { testid } });
        return new FieldEditor(this, {
          ...common,
          control: h('div', { class: 'check' }, input),
          focusEl: input,
          read: () => input.checked,
          write: (v) => {
            input.checked = !!v;
          },
          norm: (v) => !!v,
        });
      }
      case 'text':
      default: {
        const input = h('input', { id, type: 'text', autocomplete: 'off', dataset: { testid } });
        return new FieldEditor(this, {
          ...common,
          control: input,
          read: () => (input.value.trim() === '' ? null : input.value.trim()),
          write: (v) => {
            input.value = v === null || v === undefined ? '' : String(v);
          },
        });
      }
    }
  }

  // ---------------------------------------------------------------- assignee

  buildAssignee() {
    this.assigneeBox = h('div', { class: 'assignee' });
    this.takenNotice = h('div', { class: 'notice notice-warn', role: 'alert', hidden: true, dataset: { testid: 'already-taken' } });
    this.takeError = h('p', { class: 'field-error', role: 'alert', hidden: true });
    // Handing over (story 9): a picker fed by GET /api/agents, the same compare-and-set as Take.
    const pickId = uid('assign-to');
    this.assignSelect = h('select', { id: pickId, dataset: { testid: 'assign-to' } }, h('option', { value: '' }, 'Choose a colleague…'));
    this.assignForm = h(
      'form',
      {
        class: 'assign-form',
        onsubmit: (e) => {
          e.preventDefault();
          this.assignTo(Number(this.assignSelect.value) || null);
        },
      },
      h('label', { for: pickId, class: 'field-label' }, 'Assign to'),
      h('div', { class: 'assign-row' }, this.assignSelect, h('button', { type: 'submit', class: 'btn btn-small', dataset: { testid: 'assign-button' } }, 'Assign')),
    );
    this.loadAgents()
      .then((agents) => {
        if (this.destroyed) return;
        this.agentById = new Map(agents.map((a) => [a.id, a]));
        const people = agents.filter((a) => a.role !== 'service');
        this.assignSelect.append(...people.map((a) => h('option', { value: a.id }, a.id === this.me.id ? `${a.name} (me)` : a.name)));
      })
      .catch((e) => console.warn('could not load the agents', e));
    return h(
      'div',
      { class: 'field' },
      h('span', { class: 'field-label', id: 'assignee-label' }, 'Assignee'),
      this.assigneeBox,
      this.takenNotice,
      this.takeError,
      this.assignForm,
    );
  }

  /** Give the ticket to a colleague: from = the assignee shown, to = the one picked. */
  async assignTo(to) {
    if (!to) return;
    const current = this.ticket.assignee;
    const from = current ? current.id : null;
    if (from === to) return;
    const ok = await this.patchAssignee(from, to);
    if (ok) {
      this.assignSelect.value = '';
      const who = this.ticket.assignee ? this.ticket.assignee.name : 'nobody';
      this.showNotice(`Assigned to ${who}.`);
    }
  }

  renderAssignee() {
    const a = this.ticket.assignee;
    const mine = a && a.id === this.me.id;
    this.takeButton = h(
      'button',
      { type: 'button', class: 'btn btn-primary btn-small', dataset: { testid: 'take-button' }, onclick: () => this.take() },
      'Take',
    );
    replaceChildren(
      this.assigneeBox,
      a ? avatar(a, { size: 'sm' }) : null,
      h('span', { class: 'assignee-name', 'aria-describedby': 'assignee-label', dataset: { testid: 'assignee-name', assigneeId: a ? a.id : '' } }, a ? a.name : 'Unassigned'),
      mine
        ? h('button', { type: 'button', class: 'btn btn-small', dataset: { testid: 'release-button' }, onclick: () => this.release() }, 'Unassign me')
        : this.takeButton,
    );
    // The "already taken" notice stays only while the colleague holds it.
    if (!a || mine) this.hideTaken();
    else if (!this.takenNotice.hidden) this.showTaken(a);
  }

  showTaken(assignee, { offerTakeOver = true } = {}) {
    // One way forward at a time: the notice offers "Take over", so "Take" goes.
    if (this.takeButton) this.takeButton.hidden = true;
    replaceChildren(
      this.takenNotice,
      h('p', {}, 'Already taken by ', h('strong', {}, assignee.name), '.'),
      offerTakeOver
        ? h('button', { type: 'button', class: 'btn btn-small', dataset: { testid: 'take-over' }, onclick: () => this.take({ over: true }) }, `Take over from ${assignee.name}`)
        : null,
    );
    this.takenNotice.hidden = false;
  }

  hideTaken() {
    this.takenNotice.hidden = true;
    this.takenNotice.replaceChildren();
  }

  /** Make me the assignee. A colleague's ticket is only taken with the explicit "Take over". */
  async take({ over = false } = {}) {
    const current = this.ticket.assignee;
    if (current && current.id === this.me.id) return;
    if (current && !over) {
      this.showTaken(current);
      return;
    }
    await this.patchAssignee(current ? current.id : null, this.me.id);
  }

  release() {
    return this.patchAssignee(this.me.id, null);
  }

  /** Compare-and-set of the assignee; true when it was applied. */
  async patchAssignee(from, to) {
    this.takeError.hidden = true;
    const buttons = [...this.assigneeBox.querySelectorAll('button'), ...this.assignForm.querySelectorAll('button')];
    for (const b of buttons) b.disabled = true;
    try {
      const ticket = await this.client.patchTicket(this.id, { assignee_id: { from, to } });
      this.hideTaken();
      this.applyTicket(ticket);
      return true;
    } catch (e) {
      if (e instanceof ApiError && e.code === 'already_assigned') {
        const real = e.details.assignee || null;
        // Show the real assignee now; the event with its version follows.
        this.ticket = { ...this.ticket, assignee: real };
        this.renderAssignee();
        if (real && real.id !== this.me.id) this.showTaken(real);
        this.onTicket({ ...this.ticket });
      } else {
        this.takeError.textContent = `Not saved: ${e.message}`;
        this.takeError.hidden = false;
      }
      return false;
    } finally {
      for (const b of buttons) b.disabled = false;
    }
  }

  // ---------------------------------------------------------------- history

  /** "Bob changed status new → open, 12:03": GET /api/tickets/{id}/events when opened, then live. */
  buildHistory() {
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
        const page = await this.client.listEvents(this.id, { since, limit: 500 });
        all.push(...page);
        if (page.length < 500) break;
        since = page[page.length - 1].version;
      }
      if (this.destroyed) return;
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
            const name = (id) => (id === null || id === undefined ? 'nobody' : (this.agentById && this.agentById.get(Number(id))?.name) || `agent ${id}`);
            return to === null || to === undefined ? `unassigned ${name(from)}` : `assigned ${name(to)}`;
          }
          const label = field.startsWith('custom_fields.')
            ? (this.fieldDefs.find((f) => `custom_fields.${f.key}` === field)?.label || field.slice('custom_fields.'.length))
            : field.replace('_id', '');
          return `changed ${label} ${show(from)} → ${show(to)}`;
        });
        return `${who} ${parts.join(', ') || 'changed the ticket'}`;
      }
      default:
        return `${who}: ${ev.kind}`;
    }
  }

  // ---------------------------------------------------------------- tags

  buildTags() {
    const inputId = uid('tag');
    this.tagList = h('ul', { class: 'tags', 'aria-label': 'Tags' });
    this.tagInput = h('input', { id: inputId, type: 'text', maxlength: 64, autocomplete: 'off', placeholder: 'new tag', dataset: { testid: 'tag-input' } });
    this.tagError = h('p', { class: 'field-error', role: 'alert', hidden: true });
    const form = h(
      'form',
      {
        class: 'tag-form',
        onsubmit: (e) => {
          e.preventDefault();
          this.addTags();
        },
      },
      h('label', { for: inputId, class: 'sr-only' }, 'Add a tag'),
      this.tagInput,
      h('button', { type: 'submit', class: 'btn btn-small', dataset: { testid: 'tag-add' } }, 'Add'),
    );
    return h('section', { class: 'field', 'aria-labelledby': 'tags-title' }, h('h3', { id: 'tags-title', class: 'field-label' }, 'Tags'), this.tagList, form, this.tagError);
  }

  renderTags() {
    const focused = document.activeElement && this.tagList.contains(document.activeElement) ? document.activeElement.dataset.testid : null;
    replaceChildren(
      this.tagList,
      (this.ticket.tags || []).map((tag) =>
        h(
          'li',
          { class: 'chip', dataset: { testid: `tag-chip-${tag}`, tag } },
          h('span', {}, tag),
          h(
            'button',
            { type: 'button', class: 'chip-remove', 'aria-label': `Remove tag ${tag}`, title: `Remove tag ${tag}`, dataset: { testid: `tag-remove-${tag}` }, onclick: () => this.removeTag(tag) },
            '×',
          ),
        ),
      ),
      (this.ticket.tags || []).length ? null : h('li', { class: 'muted' }, 'No tags'),
    );
    if (focused) {
      const again = this.tagList.querySelector(`[data-testid="${CSS.escape(focused)}"]`);
      (again || this.tagInput).focus();
    }
  }

  async addTags() {
    const tags = this.tagInput.value
      .split(',')
      .map((s) => s.trim().toLowerCase())
      .filter(Boolean);
    if (!tags.length) return;
    const bad = tags.find((t) => [...t].length > 64 || /\p{Cc}/u.test(t));
    if (bad) return this.showTagError(`“${bad}” is not a valid tag (1–64 characters, no control characters).`);
    if (await this.changeTags(tags, [])) this.tagInput.value = '';
    this.tagInput.focus();
  }

  removeTag(tag) {
    return this.changeTags([], [tag]);
  }

  async changeTags(add, remove) {
    this.tagError.hidden = true;
    try {
      const res = await this.client.changeTags(this.id, add, remove);
      if (res && res.version >= this.ticket.version) {
        this.ticket = { ...this.ticket, tags: res.tags, version: res.version };
        this.renderTags();
        this.onTicket({ ...this.ticket });
      }
      return true;
    } catch (e) {
      this.showTagError(`Tags not saved: ${e.message}`);
      return false;
    }
  }

  showTagError(msg) {
    this.tagError.textContent = msg;
    this.tagError.hidden = false;
  }

  // ---------------------------------------------------------------- live state

  /** The database went back in time (a restore, a failover): forget the ticket; a snapshot follows. */
  onReset() {
    this.resetting = true;
    this.messages.clear();
    this.unseen.clear();
    this.messagesBefore = null;
    this.showNotice('This ticket was reloaded from the server (its data was restored); check what you were doing.');
  }

  onSnapshot({ ticket, messages, messages_before: before }) {
    const fresh = this.resetting;
    this.resetting = false;
    if (fresh) this.messagesBefore = before ?? null;
    for (const m of messages || []) this.addMessage(m, { render: false, live: !fresh });
    this.renderMessages();
    if (fresh) this.scrollConversation();
    this.applyTicket(ticket, null, { force: true });
  }

  onEvent(ev) {
    const data = ev.data || {};
    const by = ev.actor && ev.actor.id !== this.me.id ? ev.actor.name : null;
    switch (ev.kind) {
      case 'message.created':
        if (data.message) this.addMessage(data.message, { live: true });
        this.bumpVersion(ev.version);
        break;
      case 'tags.changed':
        if (ev.version > this.ticket.version && Array.isArray(data.tags)) {
          this.ticket = { ...this.ticket, tags: data.tags, version: ev.version };
          this.renderTags();
          this.flash(this.tagList);
          this.onTicket({ ...this.ticket });
        }
        break;
      case 'ticket.updated':
      default:
        if (data.ticket) this.applyTicket(data.ticket, by);
        else if (ev.kind === 'ticket.updated' && ev.version > this.ticket.version) this.applyChanges(ev, by);
        else this.bumpVersion(ev.version);
    }
    this.appendHistory(ev);
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
      for (const m of data.messages || []) this.addMessage(m, { live: true });
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
    for (const editor of this.editors.values()) editor.setServerValue(fieldValue(t, editor.name), by);
    const pa = prev.assignee ? prev.assignee.id : null;
    const na = t.assignee ? t.assignee.id : null;
    if (pa !== na || (t.assignee && prev.assignee && t.assignee.name !== prev.assignee.name)) {
      this.renderAssignee();
      this.flash(this.assigneeBox);
    }
    if (JSON.stringify(prev.tags || []) !== JSON.stringify(t.tags || [])) this.renderTags();
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

  // ---------------------------------------------------------------- conversation
  //
  // "Seen" is what the agent acknowledged, not what is on screen (story 7):
  // a colleague's or customer's message that arrives while the agent has a
  // draft (or the tab is hidden) is marked "new while you were writing" and
  // stays unacknowledged until the agent scrolls it into view with the
  // window focused, or presses the notice. Replies are sent with
  // seen_message_id = the newest message before the first unacknowledged one,
  // so the database's duplicate-reply rule (LD001) holds the send.

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

  isMine(m) {
    return !!(m && m.author && m.author.type === 'agent' && m.author.id === this.me.id);
  }

  hasDraft() {
    return !!(this.bodyInput && this.bodyInput.value.trim());
  }

  /**
   * A message arrived (live, from a catch-up or a 409 answer). `live`: it
   * arrived while the view was open, so it may need acknowledging.
   */
  addMessage(m, { render = true, live = false } = {}) {
    if (!m || this.messages.has(m.id)) return;
    this.messages.set(m.id, m);
    const needsAck = live && !this.isMine(m) && m.kind !== 'note' && (this.hasDraft() || document.visibilityState === 'hidden');
    if (needsAck) this.unseen.set(m.id, m);
    if (!render || !this.conversation) return;
    const near = this.isNearBottom();
    const el = this.messageEl(m);
    this.conversation.querySelector('.empty')?.remove();
    // Insert in id order (usually at the end).
    const next = [...this.conversation.children].find((c) => Number(c.dataset.id) > m.id);
    this.conversation.insertBefore(el, next || null);
    // Never scroll a message the agent has not acknowledged into view by itself.
    if (this.isMine(m) || (near && !needsAck)) this.scrollConversation();
    if (needsAck) this.renderUnseenNotice();
  }

  renderMessages() {
    if (!this.conversation) return;
    const list = [...this.messages.values()].sort((a, b) => a.id - b.id);
    replaceChildren(
      this.conversation,
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
      if (this.destroyed) return;
      const first = this.conversation.querySelector('.message');
      const offset = first ? first.getBoundingClientRect().top : 0;
      for (const m of page.messages || []) this.messages.set(m.id, m);
      this.messagesBefore = page.messages_before ?? null;
      this.renderMessages();
      // Keep what the agent was reading where it was.
      if (first) {
        const again = this.conversation.querySelector(`[data-id="${first.dataset.id}"]`);
        if (again) this.conversation.scrollTop += again.getBoundingClientRect().top - offset;
      }
      this.conversation.querySelector('.message')?.focus?.();
    } catch (e) {
      button.disabled = false;
      this.showNotice(`Could not load earlier messages: ${e.message}`);
    }
  }

  messageEl(m) {
    const author = m.author || {};
    const kindLabel = { customer: 'Customer', reply: 'Reply', note: 'Internal note' }[m.kind] || m.kind;
    const unseen = this.unseen.has(m.id);
    return h(
      'li',
      { class: ['message', `message-${m.kind}`, unseen ? 'message-unseen' : null], dataset: { testid: `message-${m.id}`, kind: m.kind, id: m.id }, 'aria-label': `${kindLabel} from ${author.name || 'unknown'}` },
      unseen ? h('p', { class: 'unseen-mark' }, 'New while you were writing') : null,
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
      changed = true;
      const el = this.conversation && this.conversation.querySelector(`[data-id="${id}"]`);
      if (el) {
        el.classList.remove('message-unseen');
        el.querySelector('.unseen-mark')?.remove();
      }
    }
    if (changed) {
      this.renderUnseenNotice();
      if (!this.unseen.size && this.held) this.hideHeld();
      this.scheduleDraftSave();
    }
  }

  /** "2 new messages while you were writing — Show them". */
  renderUnseenNotice() {
    if (!this.unseenNotice) return;
    const n = this.unseen.size;
    if (!n || this.held) {
      // A held send shows the same messages in its own notice.
      this.unseenNotice.hidden = true;
      this.unseenNotice.replaceChildren();
      return;
    }
    const who = [...new Set([...this.unseen.values()].map((m) => (m.author && m.author.name) || 'Someone'))].join(' and ');
    replaceChildren(
      this.unseenNotice,
      h('span', {}, `${n} new ${n === 1 ? 'message' : 'messages'} from ${who} while you were writing.`),
      h('button', { type: 'button', class: 'btn btn-small', onclick: () => this.showUnseen() }, n === 1 ? 'Show it' : 'Show them'),
    );
    this.unseenNotice.hidden = false;
  }

  /** Scroll the first unacknowledged message into view and count them all as seen. */
  showUnseen() {
    const first = Math.min(...this.unseen.keys());
    const el = this.conversation.querySelector(`[data-id="${first}"]`);
    if (el) {
      this.programmaticScroll = Date.now();
      el.scrollIntoView({ block: 'nearest' });
      this.flash(el);
    }
    this.acknowledge();
    this.bodyInput.focus();
  }

  /** The agent scrolled the conversation: messages now in view, with the window focused, are seen. */
  onConversationScroll() {
    if (!this.unseen.size || !document.hasFocus() || document.visibilityState !== 'visible') return;
    if (Date.now() - (this.programmaticScroll || 0) < 300) return; // our own scrolling is not reading
    const box = this.conversation.getBoundingClientRect();
    const inView = [];
    for (const id of this.unseen.keys()) {
      const r = this.conversation.querySelector(`[data-id="${id}"]`)?.getBoundingClientRect();
      if (r && r.top >= box.top - 1 && r.bottom <= box.bottom + 1) inView.push(id);
    }
    if (inView.length) this.acknowledge(inView);
  }

  isNearBottom() {
    const c = this.conversation;
    return !c || c.scrollHeight - c.scrollTop - c.clientHeight < NEAR_BOTTOM_PX;
  }

  scrollConversation() {
    const c = this.conversation;
    if (!c) return;
    this.programmaticScroll = Date.now();
    c.scrollTop = c.scrollHeight;
  }

  // ---------------------------------------------------------------- composer

  buildComposer() {
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
    this.unseenNotice = h('div', { class: 'unseen-notice', role: 'status', hidden: true, dataset: { testid: 'unseen-notice' } });
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

    this.composer = h(
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
      this.unseenNotice,
      this.duplicateBox,
      h('div', { class: 'composer-row' }, h('label', { for: kindId }, 'Type'), this.kindSelect),
      h('label', { for: bodyId, class: 'sr-only' }, 'Message'),
      this.bodyInput,
      this.composerError,
      h('div', { class: 'composer-actions' }, this.draftStatus, this.sendButton),
    );
    return this.composer;
  }

  updateComposerKind() {
    const note = this.kindSelect.value === 'note';
    this.composer.classList.toggle('composer-note', note);
    this.sendButton.textContent = note ? 'Add note' : 'Send reply';
    this.bodyInput.placeholder = note ? 'Write an internal note…  (Ctrl+Enter sends)' : 'Write a reply…  (Ctrl+Enter sends)';
    this.scheduleDraftSave();
  }

  /** Escape: close the composer's notices (a held send stays held until acknowledged). */
  closeNotices() {
    if (this.held) return this.editMyReply();
    if (!this.unseenNotice.hidden) this.unseenNotice.hidden = true;
  }

  onTyping() {
    this.noteActivity();
    clearTimeout(this.typingTimer);
    this.scheduleDraftSave();
    if (!this.bodyInput.value.trim()) {
      this.typing = false;
      this.updateOwnPresence();
      return;
    }
    this.typing = true;
    this.updateOwnPresence();
    this.typingTimer = setTimeout(() => {
      this.typing = false;
      this.updateOwnPresence();
    }, TYPING_IDLE_MS);
  }

  /** Any input on the page: the agent is here (idle comes after IDLE_AFTER_MS without it). */
  noteActivity() {
    this.lastActivity = Date.now();
    if (this.idleByTime) {
      this.idleByTime = false;
      this.updateOwnPresence();
    }
  }

  /** viewing / typing / idle, from the tab's visibility, input activity and the composer. */
  updateOwnPresence() {
    if (this.destroyed) return;
    let state = this.typing ? 'typing' : 'viewing';
    if (document.visibilityState === 'hidden' || this.idleByTime) state = 'idle';
    this.client.setPresence(this.id, state);
  }

  /**
   * Send the draft. `seenOverride` is used by "Send anyway" (the newest of
   * the messages that were shown in the notice).
   */
  async send(seenOverride) {
    const body = this.bodyInput.value;
    if (!body.trim() || this.sending) return;
    const kind = this.kindSelect.value;
    if (kind === 'reply' && seenOverride === undefined) {
      // Console rule: a customer message the agent has not read holds the reply.
      const customer = [...this.unseen.values()].filter((m) => m.kind === 'customer');
      if (customer.length) return this.showHeld('customer', customer);
    }
    if (!this.draftClientId) this.draftClientId = randomId();
    const msg = { kind, body, client_id: this.draftClientId };
    if (kind === 'reply') msg.seen_message_id = Math.max(this.seenId(), seenOverride || 0);
    this.sending = true;
    this.sendButton.disabled = true;
    this.composerError.hidden = true;
    try {
      await this.beforeSend();
      const m = await this.client.postMessage(this.id, msg);
      this.addMessage(m);
      if (seenOverride) this.acknowledge([...this.unseen.keys()].filter((id) => id <= seenOverride));
      this.bodyInput.value = '';
      this.draftClientId = null;
      this.hideHeld();
      clearTimeout(this.typingTimer);
      this.typing = false;
      this.updateOwnPresence();
      this.afterSend();
      this.bodyInput.focus();
    } catch (e) {
      if (e instanceof ApiError && e.code === 'duplicate_reply') {
        const replies = e.details.replies || [];
        this.showHeld('reply', replies);
        this.onHeld({ ticket: this.ticket, replies });
      } else {
        this.composerError.textContent = `Not sent (your draft is kept): ${e.message}`;
        this.composerError.hidden = false;
      }
    } finally {
      this.sending = false;
      this.sendButton.disabled = false;
    }
  }

  /**
   * The send was held: `reason` 'reply' (a colleague replied first: 409
   * duplicate_reply) or 'customer' (the customer wrote meanwhile). The
   * messages are shown beside the kept draft with "Edit my reply", "Send
   * anyway" and "Discard".
   */
  showHeld(reason, messages) {
    for (const r of messages) this.addMessage(r, { live: true }); // part of the conversation too
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
    this.renderUnseenNotice();
  }

  hideHeld() {
    this.held = null;
    this.duplicateBox.hidden = true;
    this.duplicateBox.replaceChildren();
    this.renderUnseenNotice();
  }

  /** The agent read what was shown: it counts as seen; back to the kept draft. */
  editMyReply() {
    const shown = (this.held && this.held.messages) || [];
    this.hideHeld();
    this.acknowledge(shown.map((m) => m.id));
    this.bodyInput.focus();
  }

  discardDraft() {
    const shown = (this.held && this.held.messages) || [];
    this.bodyInput.value = '';
    this.draftClientId = null;
    this.hideHeld();
    this.acknowledge(shown.map((m) => m.id));
    this.typing = false;
    this.updateOwnPresence();
    this.scheduleDraftSave();
    this.bodyInput.focus();
  }

  sendAnyway() {
    const shown = (this.held && this.held.messages) || [];
    const newest = Math.max(this.seenId(), ...shown.map((r) => r.id));
    this.acknowledge(shown.map((m) => m.id));
    return this.send(newest);
  }

  // ---------------------------------------------------------------- drafts
  //
  // The composer is saved in the database as the agent types (debounced), so
  // it survives a reload, a ticket switch and another device, and colleagues
  // see "Alice has an unsent reply" even after Alice left (contract §5). The
  // server deletes it when the message is sent; the console deletes it too.

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
    if (this.destroyed || !draft || this.bodyInput.value) return;
    this.kindSelect.value = draft.kind === 'note' ? 'note' : 'reply';
    this.updateComposerKind();
    this.bodyInput.value = draft.body || '';
    this.savedDraft = { kind: draft.kind, body: draft.body };
    // What arrived after the draft was last saved was never acknowledged with it.
    const seen = Number(draft.seen_message_id ?? this.maxMessageId());
    for (const m of this.messages.values()) {
      if (m.id > seen && !this.isMine(m) && m.kind !== 'note') this.unseen.set(m.id, m);
    }
    if (this.unseen.size) this.renderMessages();
    this.setDraftStatus(`Draft restored (saved ${relativeTime(draft.updated_at)})`);
  }

  setDraftStatus(text) {
    if (this.draftStatus) this.draftStatus.textContent = text;
  }

  /** The draft changed: save it soon (after a pause in typing, at least every few seconds). */
  scheduleDraftSave() {
    if (!this.bodyInput || this.destroyed) return;
    clearTimeout(this.draftTimer);
    const now = Date.now();
    if (!this.draftDirtySince) this.draftDirtySince = now;
    const wait = Math.max(0, Math.min(DRAFT_DEBOUNCE_MS, this.draftDirtySince + DRAFT_MAX_WAIT_MS - now));
    this.draftTimer = setTimeout(() => this.saveDraftNow(), wait);
  }

  /** Save (or delete) the draft now, after any save in flight; resolves when done. */
  saveDraftNow({ keepalive = false } = {}) {
    clearTimeout(this.draftTimer);
    this.draftTimer = null;
    this.draftDirtySince = 0;
    if (!this.bodyInput) return this.draftChain;
    const body = this.bodyInput.value;
    const kind = this.kindSelect.value;
    const want = body.trim() ? { kind, body, seen_message_id: this.seenId() } : null;
    this.draftChain = this.draftChain.then(async () => {
      const have = this.savedDraft;
      const same = want ? have && have.kind === want.kind && have.body === want.body && have.seen === want.seen_message_id : !have;
      if (same) return;
      try {
        if (want) await this.client.putDraft(this.id, want, { keepalive });
        else await this.client.deleteDraft(this.id, { keepalive });
        this.savedDraft = want ? { kind: want.kind, body: want.body, seen: want.seen_message_id } : null;
        if (!this.destroyed) this.setDraftStatus(want ? 'Draft saved' : '');
      } catch (e) {
        if (!this.destroyed) this.setDraftStatus(`Draft not saved: ${e.message}`);
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
    if (!this.draftTimer || !this.bodyInput) return;
    clearTimeout(this.draftTimer);
    this.draftTimer = null;
    const body = this.bodyInput.value;
    const want = body.trim() ? { kind: this.kindSelect.value, body, seen_message_id: this.seenId() } : null;
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

  onDestroy() {
    clearInterval(this.draftsClock);
    clearTimeout(this.draftsRefresh);
    if (this.onPageHide) window.removeEventListener('pagehide', this.onPageHide);
    // A ticket switch: what was typed since the last save is saved now.
    if (this.draftTimer) this.flushDraftOnUnload();
  }

  /** Viewers changed: if someone's draft marker changed or a viewer left, reload who has a draft. */
  onViewersChanged() {
    const sig = this.viewers
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
        if (this.destroyed) return;
        this.otherDrafts = list;
        this.renderDrafts();
      } catch (e) {
        console.warn('could not reload the drafts of the ticket', e);
      }
    }, 200);
  }

  /** "Alice Archer has an unsent reply (2 min ago)" for each colleague's draft. */
  renderDrafts() {
    if (!this.draftsBox) return;
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

  // ---------------------------------------------------------------- presence

  setViewers(viewers) {
    this.viewers = viewers || [];
    this.renderPresence();
    this.onViewersChanged();
  }

  /** What a colleague is doing, in words: "typing a reply", "has a draft", … */
  static describe(v) {
    const kind = v.draft === 'note' ? 'note' : 'reply';
    if (v.state === 'typing') return kind === 'note' ? 'writing a note' : 'typing a reply';
    if (v.draft) return v.state === 'idle' ? `has a draft ${kind} (tab in background)` : `has a draft ${kind}`;
    return { viewing: 'viewing', idle: 'idle (tab in background)' }[v.state] || v.state;
  }

  renderPresence() {
    if (!this.presenceList) return;
    const others = this.viewers.filter((v) => v.agent && v.agent.id !== this.me.id);
    replaceChildren(
      this.presenceList,
      others.map((v) => {
        const what = TicketView.describe(v);
        return h(
          'li',
          { class: ['presence', `presence-${v.state}`, v.draft ? 'presence-draft' : null], dataset: { testid: `presence-${v.agent.id}`, state: v.state, draft: v.draft || '' }, title: `${v.agent.name}: ${what}` },
          avatar(v.agent, { size: 'md', label: `${v.agent.name}, ${what}` }),
          h('span', { class: 'presence-state', 'aria-hidden': 'true' }, v.state === 'typing' ? 'typing' : v.draft ? 'draft' : v.state),
        );
      }),
      others.length ? null : h('li', { class: 'muted presence-none' }, 'No colleagues here'),
    );
    const busy = others.filter((v) => v.state === 'typing' || v.draft);
    replaceChildren(
      this.typingIndicator,
      busy.map((v) => h('span', { class: 'activity' }, `${v.agent.name} ${v.state === 'typing' ? `is ${TicketView.describe(v)}…` : TicketView.describe(v)}`)),
    );
  }
}
