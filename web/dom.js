// Small DOM helpers shared by the console's views. No HTML strings are ever
// parsed: everything is built with createElement / textContent, so untrusted
// text (subjects, message bodies, names) can never inject markup, and the
// strict Content-Security-Policy (no inline styles or scripts) holds.

/**
 * Create an element.
 *   h('button', {class: 'btn', dataset: {testid: 'x'}, onclick: fn}, 'Label')
 * Attributes: `class`, `dataset` (object), `on<event>` (function), boolean
 * attributes (true/false), `style` (object, applied through CSSOM), anything
 * else via setAttribute. Children: strings, nodes, arrays, null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = Array.isArray(v) ? v.filter(Boolean).join(' ') : v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style') Object.assign(el.style, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

/** Replace all children of `el`. */
export function replaceChildren(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** Initials of a name: "Ada Lovelace" → "AL". */
export function initials(name) {
  const parts = String(name || '?').trim().split(/\s+/).filter(Boolean);
  const first = parts[0] ? [...parts[0]][0] : '?';
  const last = parts.length > 1 ? [...parts[parts.length - 1]][0] : '';
  return (first + last).toUpperCase();
}

/** A stable, dark-enough colour (white text stays readable) for an id. */
export function colorFor(id) {
  let x = 0;
  for (const ch of String(id)) x = (x * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${(x * 137) % 360} 55% 32%)`; // 137: spreads neighbouring ids
}

/**
 * An avatar: the picture when there is an avatar_url, else an initials circle.
 * @param {{id:any, name:string, avatar_url?:string|null}} agent
 * @param {{size?: 'sm'|'md', label?: string}} [opts]
 */
export function avatar(agent, { size = 'md', label } = {}) {
  const name = (agent && agent.name) || 'Unknown';
  const title = label || name;
  if (agent && agent.avatar_url) {
    return h('img', { class: `avatar avatar-${size}`, src: agent.avatar_url, alt: title, title });
  }
  return h(
    'span',
    { class: `avatar avatar-${size}`, role: 'img', 'aria-label': title, title, style: { backgroundColor: colorFor(agent ? agent.id : name) } },
    initials(name),
  );
}

const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const timeFmt = new Intl.DateTimeFormat(undefined, { timeStyle: 'short' });

/** A short human date: the time if today, else date and time. */
export function formatTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const now = new Date();
  return d.toDateString() === now.toDateString() ? timeFmt.format(d) : dateFmt.format(d);
}

/** "just now", "2 min ago", "3 h ago", else a date: how long ago something was saved. */
export function relativeTime(iso, now = Date.now()) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return 'earlier';
  const min = Math.floor((now - t) / 60000);
  if (min < 1) return 'just now';
  if (min < 60) return `${min} min ago`;
  const hours = Math.floor(min / 60);
  if (hours < 24) return `${hours} h ago`;
  return formatTime(iso);
}

/** A `<time>` element with a machine-readable datetime. */
export function timeEl(iso) {
  return h('time', { datetime: iso || '', title: iso ? new Date(iso).toLocaleString() : '' }, formatTime(iso));
}

/** Value equality for field values (arrays compared as sets, undefined == null). */
export function sameValue(a, b) {
  const norm = (v) => {
    if (v === undefined || v === '') return null;
    if (Array.isArray(v)) return JSON.stringify([...v].map(String).sort());
    return JSON.stringify(v);
  };
  return norm(a) === norm(b);
}

/** Show a field value to a person. */
export function displayValue(v) {
  if (v === null || v === undefined || v === '') return '(empty)';
  if (Array.isArray(v)) return v.length ? v.join(', ') : '(none)';
  if (v === true) return 'Yes';
  if (v === false) return 'No';
  return String(v);
}

let idCounter = 0;
/** A unique id for label/for pairs. */
export function uid(prefix = 'ld') {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}

/** A fresh UUID v4 (crypto.randomUUID needs a secure context; fall back to getRandomValues). */
export function randomId() {
  if (globalThis.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
