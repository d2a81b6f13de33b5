// Presence on the open ticket, both ways. `PresenceStrip` shows the
// colleagues on it (avatars with viewing / typing a reply / has a draft /
// idle, and the "… is typing…" line); `OwnPresence` decides what this agent
// tells them (contract §6): `typing` while the composer is being written in,
// `idle` when the tab is hidden or after 5 minutes without a key, click,
// wheel or touch, `viewing` otherwise. They exist apart from the thread and
// the composer so that presence has one place, fed by the subscription's
// `presence` lists and by the composer's typing.

import { h, replaceChildren, avatar } from './dom.js';

/** No input for this long: idle (contract §6). */
const IDLE_AFTER_MS = 5 * 60 * 1000;
/** What counts as the agent being at the keyboard. */
const ACTIVITY_EVENTS = ['keydown', 'pointerdown', 'wheel', 'touchstart'];

/** What a colleague is doing, in words: "typing a reply", "has a draft", … */
export function describeViewer(v) {
  const kind = v.draft === 'note' ? 'note' : 'reply';
  if (v.state === 'typing') return kind === 'note' ? 'writing a note' : 'typing a reply';
  if (v.draft) return v.state === 'idle' ? `has a draft ${kind} (tab in background)` : `has a draft ${kind}`;
  return { viewing: 'viewing', idle: 'idle (tab in background)' }[v.state] || v.state;
}

/** The colleagues on the ticket: `list` (the avatars) and `activity` (who is typing or has a draft). */
export class PresenceStrip {
  /** @param {{me: {id: number}}} opts */
  constructor({ me }) {
    this.me = me;
    this.viewers = [];
    this.list = h('ul', { class: 'presence-bar', dataset: { testid: 'presence-bar' }, 'aria-label': 'Colleagues on this ticket' });
    this.activity = h('p', { class: 'typing-indicator', 'aria-live': 'polite', dataset: { testid: 'typing-indicator' } });
  }

  /** A new viewer list (the snapshot's, or a `presence` frame's). */
  set(viewers) {
    this.viewers = viewers || [];
    this.render();
  }

  render() {
    const others = this.viewers.filter((v) => v.agent && v.agent.id !== this.me.id);
    replaceChildren(
      this.list,
      others.map((v) => {
        const what = describeViewer(v);
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
      this.activity,
      busy.map((v) => h('span', { class: 'activity' }, `${v.agent.name} ${v.state === 'typing' ? `is ${describeViewer(v)}…` : describeViewer(v)}`)),
    );
  }
}

/** What this agent tells colleagues: viewing / typing / idle, sent through the client (only changes go out). */
export class OwnPresence {
  /** @param {{client: import('./livedesk-client.js').LivedeskClient, id: number}} opts */
  constructor({ client, id }) {
    this.client = client;
    this.id = id;
    this.typing = false;
    this.idleByTime = false;
    this.lastActivity = Date.now();
    this.destroyed = false;

    this.onVisibility = () => this.update();
    this.onActivity = () => this.noteActivity();
    document.addEventListener('visibilitychange', this.onVisibility);
    for (const type of ACTIVITY_EVENTS) document.addEventListener(type, this.onActivity, { passive: true, capture: true });
    this.idleTimer = setInterval(() => {
      const idle = Date.now() - this.lastActivity >= IDLE_AFTER_MS;
      if (idle !== this.idleByTime) {
        this.idleByTime = idle;
        this.update();
      }
    }, 10_000);
  }

  destroy() {
    this.destroyed = true;
    clearInterval(this.idleTimer);
    document.removeEventListener('visibilitychange', this.onVisibility);
    for (const type of ACTIVITY_EVENTS) document.removeEventListener(type, this.onActivity, { capture: true });
  }

  /** The composer started or stopped being written in. */
  setTyping(typing) {
    this.typing = typing;
    this.update();
  }

  /** Any input on the page: the agent is here (idle comes after IDLE_AFTER_MS without it). */
  noteActivity() {
    this.lastActivity = Date.now();
    if (this.idleByTime) {
      this.idleByTime = false;
      this.update();
    }
  }

  /** viewing / typing / idle, from the tab's visibility, input activity and the composer. */
  update() {
    if (this.destroyed) return;
    let state = this.typing ? 'typing' : 'viewing';
    if (document.visibilityState === 'hidden' || this.idleByTime) state = 'idle';
    this.client.setPresence(this.id, state);
  }
}
