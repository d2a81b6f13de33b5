// One editable ticket field (subject, status, custom fields…): its control,
// the value the agent saw, and the conflict notice. It exists so that every
// field follows the same compare-and-set rules (contract §2, §3): a PATCH is
// always {from: what the agent saw, to}; a field being edited is never
// overwritten by a live change, and a refused change is never silently lost
// — both show "was changed by … while you were editing" where the agent picks.

import { ApiError } from './livedesk-client.js';
import { h, replaceChildren, sameValue, displayValue } from './dom.js';

/** Read a PATCH field name (`subject`, `custom_fields.plan`) from a ticket. */
export function fieldValue(ticket, name) {
  if (name.startsWith('custom_fields.')) {
    const v = (ticket.custom_fields || {})[name.slice('custom_fields.'.length)];
    return v === undefined ? null : v;
  }
  const v = ticket[name];
  return v === undefined ? null : v;
}

/**
 * One editable field: its control, the value the agent saw (`base`), and the
 * conflict notice (data-testid="field-conflict-<name>").
 */
export class FieldEditor {
  /**
   * @param {import('./ticket.js').TicketView} view the host: its `client`, `id`,
   *   `ticket` (the newest state), `applyTicket()` and `flash()`
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
