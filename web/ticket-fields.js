// The ticket's properties beside the conversation: status, priority,
// assignee ("Take", "Take over", "Assign to", "Unassign me"), tags and the
// custom fields. It exists so that everything an agent edits about a ticket
// (as opposed to writing in it) lives in one place with one rule: every edit
// is a compare-and-set through the client — fields by FieldEditor
// (PATCH {from, to}), the assignee from the assignee shown, tags by deltas
// only (add / remove one tag) — so a stale page never clobbers a colleague.

import { ApiError } from './livedesk-client.js';
import { h, replaceChildren, avatar, displayValue, uid } from './dom.js';
import { FieldEditor, fieldValue } from './field-editor.js';

export const STATUSES = ['new', 'open', 'pending', 'resolved', 'closed'];
export const PRIORITIES = ['low', 'normal', 'high', 'urgent'];

/** Field options as `{value, label}`, whatever shape the definition gives them in. */
function normalizeOptions(options) {
  let list = options;
  if (list && !Array.isArray(list)) list = list.values || list.choices || list.options || [];
  return (list || []).map((o) => (o && typeof o === 'object' ? { value: String(o.value ?? o.key ?? o.label), label: String(o.label ?? o.value) } : { value: String(o), label: String(o) }));
}

export class FieldsSidebar {
  /**
   * @param {import('./ticket.js').TicketView} view the host: its `client`, `id`, `me`,
   *   `ticket` (the newest state), `fieldDefs`, `applyTicket()`, `replaceTicket()`,
   *   `flash()` and `showNotice()`
   */
  constructor(view) {
    this.view = view;
    /** PATCH field name -> FieldEditor (status, priority, custom_fields.<key>). */
    this.editors = new Map();
    const t = view.ticket;
    this.el = h(
      'aside',
      { class: 'ticket-side', 'aria-label': 'Ticket properties' },
      this.buildSelectEditor('status', 'Status', STATUSES, t.status, 'ticket-status'),
      this.buildSelectEditor('priority', 'Priority', PRIORITIES, t.priority, 'ticket-priority'),
      this.buildAssignee(),
      this.buildTags(),
      (this.customFieldsSlot = h('div', { class: 'custom-fields-slot' }, this.buildCustomFields())),
    );
    this.renderAssignee();
    this.renderTags();
  }

  /** The agent directory (GET /api/agents) arrived: fill the "Assign to" picker, service agents left out. */
  setAgents(agents) {
    const people = agents.filter((a) => a.role !== 'service');
    this.assignSelect.append(...people.map((a) => h('option', { value: a.id }, a.id === this.view.me.id ? `${a.name} (me)` : a.name)));
  }

  /**
   * A newer ticket state is shown (`prev` → `t`): editors being edited keep the
   * agent's value; the assignee and tags are redrawn when they changed.
   */
  applyTicket(prev, t, by) {
    for (const editor of this.editors.values()) editor.setServerValue(fieldValue(t, editor.name), by);
    const pa = prev.assignee ? prev.assignee.id : null;
    const na = t.assignee ? t.assignee.id : null;
    if (pa !== na || (t.assignee && prev.assignee && t.assignee.name !== prev.assignee.name)) {
      this.renderAssignee();
      this.view.flash(this.assigneeBox);
    }
    if (JSON.stringify(prev.tags || []) !== JSON.stringify(t.tags || [])) this.renderTags();
  }

  addEditor(editor, value) {
    editor.init(value);
    this.editors.set(editor.name, editor);
  }

  buildSelectEditor(name, label, values, value, testid) {
    const id = uid(name);
    const select = h('select', { id, dataset: { testid } }, values.map((v) => h('option', { value: v }, v)));
    const editor = new FieldEditor(this.view, {
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
    if (JSON.stringify(list) === JSON.stringify(this.view.fieldDefs)) return;
    const kept = new Map();
    for (const [name, editor] of [...this.editors]) {
      if (!name.startsWith('custom_fields.')) continue;
      if (editor.dirty()) kept.set(name, { value: editor.read(), base: editor.base });
      this.editors.delete(name);
    }
    this.view.fieldDefs = list;
    replaceChildren(this.customFieldsSlot, this.buildCustomFields());
    for (const [name, k] of kept) {
      const editor = this.editors.get(name);
      if (!editor) continue;
      editor.write(k.value);
      editor.base = k.base;
    }
    this.view.flash(this.customFieldsSlot);
  }

  buildCustomFields() {
    const cf = this.view.ticket.custom_fields || {};
    const defined = new Set(this.view.fieldDefs.map((d) => d.key));
    const editors = this.view.fieldDefs.map((def) => {
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
        return new FieldEditor(this.view, {
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
        return new FieldEditor(this.view, {
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
        return new FieldEditor(this.view, {
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
        return new FieldEditor(this.view, {
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
        return new FieldEditor(this.view, {
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
        return new FieldEditor(this.view, {
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
    const current = this.view.ticket.assignee;
    const from = current ? current.id : null;
    if (from === to) return;
    const ok = await this.patchAssignee(from, to);
    if (ok) {
      this.assignSelect.value = '';
      const who = this.view.ticket.assignee ? this.view.ticket.assignee.name : 'nobody';
      this.view.showNotice(`Assigned to ${who}.`);
    }
  }

  renderAssignee() {
    const a = this.view.ticket.assignee;
    const mine = a && a.id === this.view.me.id;
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
    const current = this.view.ticket.assignee;
    if (current && current.id === this.view.me.id) return;
    if (current && !over) {
      this.showTaken(current);
      return;
    }
    await this.patchAssignee(current ? current.id : null, this.view.me.id);
  }

  release() {
    return this.patchAssignee(this.view.me.id, null);
  }

  /** Compare-and-set of the assignee; true when it was applied. */
  async patchAssignee(from, to) {
    this.takeError.hidden = true;
    const buttons = [...this.assigneeBox.querySelectorAll('button'), ...this.assignForm.querySelectorAll('button')];
    for (const b of buttons) b.disabled = true;
    try {
      const ticket = await this.view.client.patchTicket(this.view.id, { assignee_id: { from, to } });
      this.hideTaken();
      this.view.applyTicket(ticket);
      return true;
    } catch (e) {
      if (e instanceof ApiError && e.code === 'already_assigned') {
        const real = e.details.assignee || null;
        // Show the real assignee now; the event with its version follows.
        this.view.replaceTicket({ ...this.view.ticket, assignee: real });
        this.renderAssignee();
        if (real && real.id !== this.view.me.id) this.showTaken(real);
      } else {
        this.takeError.textContent = `Not saved: ${e.message}`;
        this.takeError.hidden = false;
      }
      return false;
    } finally {
      for (const b of buttons) b.disabled = false;
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
      (this.view.ticket.tags || []).map((tag) =>
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
      (this.view.ticket.tags || []).length ? null : h('li', { class: 'muted' }, 'No tags'),
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
      const res = await this.view.client.changeTags(this.view.id, add, remove);
      if (res && res.version >= this.view.ticket.version) {
        // The answer carries the tags only. Its version is ours only when no
        // other change came in between; otherwise those changes' events (on
        // their way, in order) bring the rest of the ticket and the version,
        // and taking the version now would make them look old and be dropped.
        const version = res.version === this.view.ticket.version + 1 ? res.version : this.view.ticket.version;
        this.view.replaceTicket({ ...this.view.ticket, tags: res.tags, version });
        this.renderTags();
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
}
