// End-to-end test of the web console in a real browser (Debian's Chromium,
// driven by playwright-core), against a real livedesk server.
//
// Started by tests/browser.rs, which creates the data and passes it in the
// environment:
//   BASE             http://127.0.0.1:PORT of the server
//   TOKEN_A, TOKEN_B tokens of two agents
//   NAME_A, NAME_B   their names;  AGENT_A, AGENT_B  their ids
//   TICKET           the ticket both work on (tags "billing" and "refund",
//                    one customer message, custom field "plan" = "pro")
//   TOKEN_SERVICE    a service agent's token (posts customer messages)
//   NAME_C, AGENT_C, TOKEN_C  Carol: assigned to, and idle after 5 minutes
//   TOKEN_D, LOGIN_D          Dana: her API token and a one-time login link (log out)
//   PRINTER_TICKET   another ticket (assigned to B by direct SQL: a notification)
//   LONG_TICKET      a ticket with 60 notes ("Load earlier")
//   SCREENSHOT_DIR   where the screenshots go (created if missing)
//   CHROMIUM         the browser binary (default /usr/bin/chromium)
//
// Direct SQL steps: the script prints one of these lines and waits for
// `SQL_DONE` on stdin (the Rust side has run the statement by then):
//   SQL_UPDATE_SUBJECT <new subject>   UPDATE tickets SET subject
//   SQL_CHANNEL_CUSTOMER               a new customer, channel chat
//   SQL_ASSIGN <ticket> <agent>        UPDATE tickets SET assignee_id
//   SQL_HOLE <new subject>             as the superuser, triggers off: version
//                                      v+1 missing from the log for good
//
// Every check prints `PASS …` or `FAIL …`; the last line is
//   RESULT {json}
// with what the browsers ended with, for the Rust side to compare with the
// database. Exit code 0 only if every check passed.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { createRequire } from 'node:module';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === '') {
    console.log(`FAIL missing environment variable ${name}`);
    process.exit(2);
  }
  return v;
};
const BASE = env('BASE');
const TICKET = Number(env('TICKET'));
const AGENTS = {
  A: { token: env('TOKEN_A'), name: env('NAME_A'), id: Number(env('AGENT_A')) },
  B: { token: env('TOKEN_B'), name: env('NAME_B'), id: Number(env('AGENT_B')) },
};
const TOKEN_SERVICE = env('TOKEN_SERVICE');
const CAROL = { name: env('NAME_C'), id: Number(env('AGENT_C')), token: env('TOKEN_C') };
const DANA = { token: env('TOKEN_D'), login: env('LOGIN_D') };
const SHOTS = env('SCREENSHOT_DIR');
const PRINTER = Number(env('PRINTER_TICKET'));
const LONG = Number(env('LONG_TICKET'));
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');
const WAIT = 10_000; // default wait for anything to show up

fs.mkdirSync(SHOTS, { recursive: true });

// ------------------------------------------------------------------ harness

let failures = 0;
let currentStep = 'setup';
function check(cond, msg) {
  console.log(`${cond ? 'PASS' : 'FAIL'} [${currentStep}] ${msg}`);
  if (!cond) failures += 1;
  return cond;
}
const t = (id) => `[data-testid="${id}"]`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A wait that failed: the later steps build on this one, so the run stops. */
class StepFailed extends Error {}

/** Wait for a condition in the page; on timeout a FAIL, and the run stops. */
async function waitIn(page, msg, fn, arg, timeout = WAIT) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 50 });
  } catch (e) {
    check(false, `${msg} (not within ${timeout} ms)`);
    throw new StepFailed(msg);
  }
  return check(true, msg);
}

let shotNo = 0;
const shots = [];
async function shot(agent, label) {
  const file = path.join(SHOTS, `${String(++shotNo).padStart(2, '0')}-${label}-${agent.key}.png`);
  await agent.page.screenshot({ path: file, fullPage: true });
  shots.push(path.basename(file));
}
async function shotBoth(label) {
  await shot(AGENTS.A, label);
  await shot(AGENTS.B, label);
}

/**
 * Hold the matching request of every page until each page has sent one, then
 * let them all go at once: both agents act "from the same state" and the
 * requests really race at the server (not at the client).
 */
async function together(label, method, pathname, action) {
  const pages = [AGENTS.A, AGENTS.B];
  const held = new Map();
  let release;
  const all = new Promise((r) => {
    release = r;
  });
  const match = (url) => url.pathname === pathname;
  const handlers = pages.map((agent) => async (route) => {
    if (route.request().method() !== method || held.has(agent.key)) return route.fallback();
    held.set(agent.key, route);
    if (held.size === pages.length) release();
    await all;
    await route.continue();
  });
  for (const [i, agent] of pages.entries()) await agent.page.route(match, handlers[i]);
  await action();
  const ok = await Promise.race([all.then(() => true), sleep(WAIT).then(() => false)]);
  check(ok, `${label}: both agents' ${method} ${pathname} reached the network together (held: ${[...held.keys()].join(',') || 'none'})`);
  release(); // never leave a request hanging
  for (const [i, agent] of pages.entries()) await agent.page.unroute(match, handlers[i]);
  return ok;
}

// ------------------------------------------------------------------ browser

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  // Playwright gives the browser a fresh temporary --user-data-dir (and
  // removes it on close); these flags are what a root, offline machine needs.
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
  timeout: 30_000,
});

/** Everything unexpected a page reports: console errors/warnings, page errors, CSP violations, failed requests. */
const problems = [];
/** HTTP answers >= 400, per agent: [{status, method, path}] (the expected 409s are checked off). */
const httpErrors = { A: [], B: [] };
/** The 409s each agent must get (path per expected answer). */
const expected409 = { A: [], B: [] };

async function openAgent(key) {
  const agent = AGENTS[key];
  agent.key = key;
  const context = await browser.newContext({ viewport: { width: 1300, height: 900 }, baseURL: BASE });
  await context.exposeBinding('__e2eCsp', (_source, v) => problems.push(`${key} CSP violation: ${v}`));
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__e2eCsp(`${e.violatedDirective} blocked ${e.blockedURI || '(inline)'} at ${e.sourceFile}:${e.lineNumber}`);
    });
  });
  const page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() !== 'error' && m.type() !== 'warning') return;
    const loc = m.location();
    // Chromium logs every non-2xx answer of fetch() as "Failed to load resource";
    // the HTTP answers are checked one by one below instead.
    if (/^Failed to load resource: the server responded with a status of \d+/.test(m.text())) return;
    // The lost-answer step cuts one answer on purpose (and checks it).
    if (currentStep === 'lost-answer' && /^Failed to load resource: net::ERR_/.test(m.text())) return;
    // The gap step provokes this one on purpose (and checks it).
    if (currentStep === 'gap' && m.type() === 'warning' && /stays incomplete after version \d+; taking a snapshot/.test(m.text())) {
      gapWarnings[key] += 1;
      return;
    }
    problems.push(`${key} console ${m.type()}: ${m.text()} (${loc.url}:${loc.lineNumber})`);
  });
  page.on('pageerror', (e) => problems.push(`${key} page error: ${e.message}`));
  page.on('requestfailed', (r) => {
    if (currentStep === 'lost-answer' && r.method() === 'POST' && r.url().endsWith('/messages')) return;
    if (!closing) problems.push(`${key} request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400) httpErrors[key].push({ status: r.status(), method: r.request().method(), path: new URL(r.url()).pathname });
  });
  page.on('websocket', (ws) => {
    ws.on('framesent', (f) => {
      try {
        const frame = JSON.parse(typeof f.payload === 'string' ? f.payload : f.payload.toString());
        if (frame.type === 'subscribe') subscribes[key].push({ at: Date.now(), ...frame });
      } catch {
        /* not ours */
      }
    });
    ws.on('framereceived', (f) => {
      const text = typeof f.payload === 'string' ? f.payload : f.payload.toString();
      if (text.includes('"reset"')) {
        try {
          const frame = JSON.parse(text);
          if (frame.type === 'reset') resets[key].push(frame);
        } catch {
          /* not ours */
        }
      }
    });
    ws.on('socketerror', (e) => {
      if (!closing) problems.push(`${key} websocket error: ${e}`);
    });
  });
  agent.context = context;
  agent.page = page;
  return agent;
}
let closing = false;
/** Every `subscribe` frame each agent's page sent: {at, ticket_id, since}. */
const subscribes = { A: [], B: [] };
/** The client's warning when it leaves a permanent gap behind with a snapshot, per agent. */
const gapWarnings = { A: 0, B: 0 };
/** `reset` frames each agent's page received. */
const resets = { A: [], B: [] };

/** Emulate the Page Visibility API: headless Chromium keeps every page "visible" (a second tab, window.open or minimising the window change nothing). */
async function setVisibility(agent, state) {
  await agent.page.evaluate((s) => {
    Object.defineProperty(document, 'visibilityState', { value: s, configurable: true });
    Object.defineProperty(document, 'hidden', { value: s === 'hidden', configurable: true });
    document.dispatchEvent(new Event('visibilitychange'));
  }, state);
}

const presenceState = (viewer) => `${t(`presence-${viewer.id}`)}`;
async function waitPresence(watcher, viewer, state, msg) {
  return waitIn(
    watcher.page,
    msg,
    ([sel, s]) => document.querySelector(sel)?.dataset.state === s,
    [presenceState(viewer), state],
  );
}

const text = (page, id) => page.locator(t(id)).first().textContent({ timeout: 2000 }).catch(() => null);
const visible = (page, id) => page.locator(`${t(id)}:not([hidden])`).first().isVisible().catch(() => false);
const replyBodies = (page) => page.$$eval(`${t('conversation')} [data-kind="reply"] .message-body`, (els) => els.map((e) => e.textContent));
const tagsIn = (page) => page.$$eval(`${t('ticket-view')} [data-testid^="tag-chip-"]`, (els) => els.map((e) => e.dataset.tag).sort());

/** The API as another client sees it (not through a page: not counted as the page's HTTP answers). */
async function api(method, pathname, token, body) {
  const res = await fetch(BASE + pathname, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}
/** Every message of the ticket, from the database (through the API). */
async function storedMessages() {
  const { status, body } = await api('GET', `/api/tickets/${TICKET}`, AGENTS.A.token);
  if (status !== 200) throw new Error(`GET ticket: ${status}`);
  return body.messages;
}
/** Ask the Rust side for a direct SQL write (`<COMMAND> <args>`), wait for SQL_DONE. */
async function askRust(line) {
  const rl = readline.createInterface({ input: process.stdin });
  const ack = new Promise((resolve) => rl.once('line', resolve));
  console.log(line);
  const answer = await Promise.race([ack, sleep(15_000).then(() => null)]);
  rl.close();
  return check(answer !== null && answer.trim() === 'SQL_DONE', `the Rust side ran "${line}" (answer: ${JSON.stringify(answer)})`);
}
const notificationsOf = (agent) => agent.page.$$eval('[data-testid="notifications-panel"] li[data-kind]', (els) => els.map((e) => ({ kind: e.dataset.kind, ticket: Number(e.dataset.ticketId), text: e.textContent, unread: e.classList.contains('notif-unread') })));
/** axe-core, evaluated through DevTools (not a <script>: the page's CSP stays as it is). */
let axeSource = null;
async function axeCheck(agent, what) {
  axeSource ??= fs.readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
  if (!(await agent.page.evaluate(() => !!window.axe))) await agent.page.evaluate(axeSource);
  const violations = await agent.page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 3) }));
  });
  const serious = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  check(serious.length === 0, `${agent.key}, ${what}: axe-core finds no serious or critical violation ${JSON.stringify(serious)}`);
  if (violations.length) console.log(`INFO [axe] ${agent.key}, ${what}: ${JSON.stringify(violations)}`);
}
/** Person timing: the seconds between seeing something and clicking. */
const think = (seconds) => sleep(seconds * 1000);

const result = {};
const A = AGENTS.A;
const B = AGENTS.B;

async function main() {
  // ---------------------------------------------------------------- login
  currentStep = 'login';
  await openAgent('A');
  await openAgent('B');
  for (const agent of [A, B]) {
    await agent.page.goto(`/#token=${encodeURIComponent(agent.token)}`);
    await waitIn(agent.page, `${agent.key} is live`, (sel) => document.querySelector(sel)?.dataset.state === 'live', t('conn-state'));
    check(!agent.page.url().includes(agent.token), `${agent.key}: token removed from the URL (${agent.page.url()})`);
    check((await text(agent.page, 'me-name')) === agent.name, `${agent.key}: logged in as ${agent.name}`);
    await waitIn(agent.page, `${agent.key}: inbox lists the ticket`, (sel) => !!document.querySelector(sel), t(`inbox-row-${TICKET}`));
  }

  // ---------------------------------------------------------------- presence: viewing
  currentStep = 'viewing';
  await B.page.click(t(`inbox-row-${TICKET}`));
  await waitIn(B.page, 'B opened the ticket', (sel) => !!document.querySelector(sel), `${t('ticket-view')} ${t('ticket-subject')}`);
  await A.page.click(t(`inbox-row-${TICKET}`));
  await waitIn(A.page, 'A opened the ticket', (sel) => !!document.querySelector(sel), `${t('ticket-view')} ${t('ticket-subject')}`);
  await waitPresence(B, A, 'viewing', "B sees A's avatar, viewing");
  await waitPresence(A, B, 'viewing', "A sees B's avatar, viewing");
  check(
    ((await B.page.getAttribute(presenceState(A), 'title')) || '').includes(A.name),
    `B's presence avatar for A is titled with A's name`,
  );
  check((await B.page.$$(`${t('conversation')} [data-kind="customer"]`)).length === 1, 'the customer message is shown');
  check((await A.page.inputValue(t('field-plan')).catch(() => null)) === 'pro', 'custom field "plan" shows "pro"');
  await shotBoth('viewing');

  // ---------------------------------------------------------------- presence: typing
  currentStep = 'typing';
  await A.page.click(t('composer-body'));
  await A.page.keyboard.type('Hello, I am looking', { delay: 15 });
  await waitPresence(B, A, 'typing', 'B sees A typing');
  await waitIn(B.page, 'B shows "<A> is typing…"', ([sel, name]) => (document.querySelector(sel)?.textContent || '').includes(`${name} is typing`), [t('typing-indicator'), A.name]);
  await shotBoth('typing');
  await waitPresence(B, A, 'viewing', 'A is back to viewing after a pause in typing', 8000);

  // ---------------------------------------------------------------- presence: idle tab
  currentStep = 'idle';
  await setVisibility(A, 'hidden');
  await waitPresence(B, A, 'idle', "A's tab hidden → B sees A idle");
  await shotBoth('idle');
  await setVisibility(A, 'visible');
  await waitPresence(B, A, 'viewing', "A's tab visible again → B sees A viewing");

  // ---------------------------------------------------------------- internal note
  currentStep = 'note';
  const note = 'Internal: customer is on the pro plan, refund approved';
  await A.page.fill(t('composer-body'), note);
  await A.page.selectOption(t('composer-kind'), 'note');
  await waitIn(B.page, `B sees "${A.name}, writing a note"`, ([name]) => !!document.querySelector(`[aria-label="${name}, writing a note"]`), [A.name]);
  await A.page.click(t('composer-send'));
  await waitIn(
    B.page,
    "A's note appears in B's view without reload",
    (body) => [...document.querySelectorAll('[data-testid="conversation"] [data-kind="note"] .message-body')].some((e) => e.textContent === body),
    note,
  );
  await waitIn(A.page, "A's composer is emptied after sending", (sel) => document.querySelector(sel).value === '', t('composer-body'));
  await shotBoth('note');

  // ---------------------------------------------------------------- duplicate reply
  currentStep = 'duplicate-reply';
  await A.page.selectOption(t('composer-kind'), 'reply');
  const drafts = { A: `Reply from ${A.name}: your refund is on its way.`, B: `Reply from ${B.name}: we are processing your refund.` };
  await A.page.fill(t('composer-body'), drafts.A);
  await B.page.fill(t('composer-body'), drafts.B);
  await together('reply race', 'POST', `/api/tickets/${TICKET}/messages`, () =>
    Promise.all([A.page.click(t('composer-send')), B.page.click(t('composer-send'))]),
  );
  // Settle: one composer empties, the other shows the notice.
  await waitIn(
    A.page,
    'the reply race settled in A',
    ([body, dup]) => document.querySelector(body).value === '' || !!document.querySelector(`${dup}:not([hidden])`),
    [t('composer-body'), t('duplicate-notice')],
  );
  await waitIn(
    B.page,
    'the reply race settled in B',
    ([body, dup]) => document.querySelector(body).value === '' || !!document.querySelector(`${dup}:not([hidden])`),
    [t('composer-body'), t('duplicate-notice')],
  );
  const dupA = await visible(A.page, 'duplicate-notice');
  const dupB = await visible(B.page, 'duplicate-notice');
  check(dupA !== dupB, `exactly one agent got the duplicate notice (A: ${dupA}, B: ${dupB})`);
  const loser = dupA ? A : B;
  const winner = dupA ? B : A;
  expected409[loser.key].push(`/api/tickets/${TICKET}/messages`); // its duplicate_reply
  result.reply_winner = winner.key;
  // The winner's reply is the only one sent, in both conversations.
  for (const agent of [A, B]) {
    await waitIn(
      agent.page,
      `${agent.key}'s conversation shows exactly one reply, ${winner.key}'s`,
      (body) => {
        const r = [...document.querySelectorAll('[data-testid="conversation"] [data-kind="reply"] .message-body')].map((e) => e.textContent);
        return r.length === 1 && r[0] === body;
      },
      drafts[winner.key],
    );
  }
  const notice = (await text(loser.page, 'duplicate-notice')) || '';
  check(notice.includes(`${winner.name} just replied`), `${loser.key}'s notice names the colleague: "${notice.slice(0, 60)}…"`);
  check(notice.includes(drafts[winner.key]), `${loser.key}'s notice shows ${winner.key}'s reply in the composer area`);
  const composerHasNotice = await loser.page.$eval(t('duplicate-notice'), (el) => !!el.closest('form.composer'));
  check(composerHasNotice, 'the notice is inside the composer');
  check((await loser.page.inputValue(t('composer-body'))) === drafts[loser.key], `${loser.key}'s draft is kept`);
  check((await winner.page.inputValue(t('composer-body'))) === '', `${winner.key}'s composer is empty (sent)`);
  check(!(await visible(winner.page, 'duplicate-notice')), `${winner.key} has no duplicate notice`);
  await shot(loser, 'duplicate-loser');
  await shot(winner, 'duplicate-winner');
  for (const label of ['Edit my reply', 'Send anyway', 'Discard']) {
    check(await loser.page.getByRole('button', { name: label, exact: true }).isVisible(), `${loser.key} is offered "${label}"`);
  }
  // Discard the draft: exactly one reply stays sent.
  await loser.page.getByRole('button', { name: 'Discard', exact: true }).click();
  await waitIn(loser.page, `${loser.key}: "Discard" empties the composer and hides the notice`, ([body, dup]) => document.querySelector(body).value === '' && document.querySelector(dup).hidden, [t('composer-body'), t('duplicate-notice')]);

  // ---------------------------------------------------------------- held duplicate (story 7)
  // B starts a reply; A's reply arrives a moment later; B, having only seen
  // "something move", presses Send one second later: the send is held.
  currentStep = 'held-duplicate';
  const composerOf = (agent) => agent.page.getByRole('textbox', { name: 'Message' });
  const sendOf = (agent) => agent.page.getByRole('button', { name: 'Send reply' });
  const heldB = `Reply from ${B.name}: I have started the refund for order 1042.`;
  const replyA = `Reply from ${A.name}: the refund was issued this morning.`;
  await composerOf(B).click();
  await B.page.keyboard.type(heldB, { delay: 5 });
  await composerOf(A).fill(replyA);
  await sendOf(A).click();
  const aReply = B.page.getByRole('log', { name: 'Conversation' }).getByRole('listitem').filter({ hasText: replyA });
  await waitIn(B.page, "A's reply appears in B's thread", (body) => [...document.querySelectorAll('[role="log"] li')].some((li) => li.textContent.includes(body)), replyA);
  check(((await aReply.textContent()) || '').includes('New while you were writing'), 'it is marked "New while you were writing" in B\'s thread');
  check(await B.page.getByRole('status').filter({ hasText: 'while you were writing' }).isVisible(), 'B sees the notice "1 new message … while you were writing"');
  await shotBoth('held-new-while-writing');
  await think(1);
  const before = (await storedMessages()).length;
  await sendOf(B).click();
  expected409.B.push(`/api/tickets/${TICKET}/messages`);
  const heldNotice = B.page.getByRole('alert').filter({ hasText: `${A.name} just replied` });
  await heldNotice.waitFor({ timeout: WAIT }).then(() => check(true, `B's send is held: "${A.name} just replied"`), () => check(false, "B's send is held"));
  const stored = await storedMessages();
  check(stored.length === before && !stored.some((m) => m.body === heldB), `nothing stored for B (${stored.length} messages, ${before} before)`);
  check(((await heldNotice.textContent()) || '').includes(replyA), "the held notice shows A's reply beside the draft");
  check((await composerOf(B).inputValue()) === heldB, "B's draft is kept");
  for (const label of ['Edit my reply', 'Send anyway', 'Discard']) {
    check(await heldNotice.getByRole('button', { name: label, exact: true }).isVisible(), `B is offered "${label}"`);
  }
  await shot(B, 'held-duplicate');
  await axeCheck(B, 'a held reply');
  await think(1);
  await heldNotice.getByRole('button', { name: 'Send anyway' }).click();
  await waitIn(B.page, 'after "Send anyway" B\'s composer is empty', (sel) => document.querySelector(sel).value === '', t('composer-body'));
  for (const agent of [A, B]) {
    await waitIn(agent.page, `${agent.key} shows B's reply once`, (body) => [...document.querySelectorAll('[role="log"] .message-body')].filter((e) => e.textContent === body).length === 1, heldB);
  }
  const afterAnyway = await storedMessages();
  check(afterAnyway.filter((m) => m.body === heldB).length === 1, '"Send anyway" stored B\'s reply exactly once');
  check(!(await B.page.getByText('New while you were writing').count()), 'no message is marked unseen any more');
  await shotBoth('held-send-anyway');

  // A customer message that arrives while B writes holds the send (console rule): nothing is sent.
  currentStep = 'held-customer';
  const heldC = `Reply from ${B.name}: thank you for your patience.`;
  const customerMsg = 'Customer: also, my address changed last week.';
  await composerOf(B).click();
  await B.page.keyboard.type(heldC, { delay: 5 });
  const posted = await api('POST', `/api/tickets/${TICKET}/messages`, TOKEN_SERVICE, { kind: 'customer', body: customerMsg });
  check(posted.status === 201, `the customer's message was posted by the gateway (${posted.status})`);
  await waitIn(B.page, "the customer's message appears in B's thread", (body) => [...document.querySelectorAll('[role="log"] .message-body')].some((e) => e.textContent === body), customerMsg);
  await think(1);
  const requests = [];
  const onRequest = (r) => {
    if (r.method() === 'POST' && r.url().endsWith(`/api/tickets/${TICKET}/messages`)) requests.push(r.url());
  };
  B.page.on('request', onRequest);
  await sendOf(B).click();
  const custNotice = B.page.getByRole('alert').filter({ hasText: 'wrote while you were writing' });
  await custNotice.waitFor({ timeout: WAIT }).then(() => check(true, 'B\'s send is held by the customer\'s message'), () => check(false, "B's send is held by the customer's message"));
  check(((await custNotice.textContent()) || '').includes(customerMsg), "the notice shows the customer's message");
  await sleep(300);
  check(requests.length === 0, `no message was sent while held (${requests.length})`);
  await shot(B, 'held-customer');
  await think(1);
  await custNotice.getByRole('button', { name: 'Edit my reply' }).click();
  check((await composerOf(B).inputValue()) === heldC, 'B edits the kept draft');
  await B.page.keyboard.press('Control+Enter');
  await waitIn(B.page, 'Ctrl+Enter sends the acknowledged reply', (sel) => document.querySelector(sel).value === '', t('composer-body'));
  B.page.off('request', onRequest);
  check((await storedMessages()).filter((m) => m.body === heldC).length === 1, "B's reply is stored once");

  // ---------------------------------------------------------------- acknowledged by scrolling
  // A message that arrives while B writes is below the fold (never scrolled
  // in by itself); it counts as seen once B scrolls it into view.
  currentStep = 'scroll-ack';
  const replyS = `Reply from ${B.name}: noted, we will update the address.`;
  const customerS = 'Customer: please send the refund to my new card.';
  await composerOf(B).click();
  await B.page.keyboard.type(replyS, { delay: 5 });
  const postedS = await api('POST', `/api/tickets/${TICKET}/messages`, TOKEN_SERVICE, { kind: 'customer', body: customerS });
  check(postedS.status === 201, `the customer wrote again (${postedS.status})`);
  const unseenLi = B.page.locator('[role="log"] li').filter({ hasText: customerS });
  await unseenLi.waitFor({ timeout: WAIT });
  await think(1.5);
  check(((await unseenLi.textContent()) || '').includes('New while you were writing'), 'after 1.5 s without scrolling it is still "New while you were writing"');
  const inView = () => unseenLi.evaluate((li) => {
    const box = li.closest('ol').getBoundingClientRect();
    const r = li.getBoundingClientRect();
    return r.top >= box.top - 1 && r.bottom <= box.bottom + 1;
  });
  check(!(await inView()), 'it was not scrolled into view by itself');
  await shot(B, 'scroll-ack-before');
  const log = B.page.getByRole('log', { name: 'Conversation' });
  await log.hover();
  for (let i = 0; i < 10 && !(await inView()); i++) {
    await B.page.mouse.wheel(0, 200);
    await sleep(100);
  }
  await waitIn(B.page, 'scrolled into view with the window focused, it is acknowledged', ([body]) => {
    const li = [...document.querySelectorAll('[role="log"] li')].find((e) => e.textContent.includes(body));
    return !!li && !li.textContent.includes('New while you were writing');
  }, [customerS]);
  check(!(await B.page.getByRole('status').filter({ hasText: 'while you were writing' }).count()), 'the notice is gone');
  await composerOf(B).press('Control+Enter');
  await waitIn(B.page, 'the reply is sent, not held', (sel) => document.querySelector(sel).value === '', t('composer-body'));
  check((await storedMessages()).filter((m) => m.body === replyS).length === 1, "B's reply is stored once");

  // ---------------------------------------------------------------- a held send shows everything unseen
  // B types; A's reply arrives, then the customer writes. B presses Send: the
  // hold shows A's reply too, not only the customer's message (a review sent
  // a contradicting reply with "Send anyway" past a colleague's reply it
  // never showed). While B reads it the customer writes again: "Send anyway"
  // holds once more for that message instead of counting it as seen.
  currentStep = 'held-everything';
  const replyE = `Reply from ${B.name}: we will refund the full 120 EUR.`;
  const fromA = `Reply from ${A.name}: we cannot refund this one; here is a voucher.`;
  const customerE = 'Customer: OK thanks.';
  const customerE2 = 'Customer: I moved house, change my address before you answer!';
  const inThread = (page, body) => waitIn(page, `"${body}" appears in the thread`, (b) => [...document.querySelectorAll('[role="log"] .message-body')].some((e) => e.textContent === b), body);
  await composerOf(B).click();
  await B.page.keyboard.type(replyE, { delay: 5 });
  const newestE = Math.max(...(await storedMessages()).map((m) => m.id));
  const byA = await api('POST', `/api/tickets/${TICKET}/messages`, A.token, { kind: 'reply', body: fromA, seen_message_id: newestE });
  check(byA.status === 201, `A replied (${byA.status})`);
  await inThread(B.page, fromA);
  await think(1);
  const custE = await api('POST', `/api/tickets/${TICKET}/messages`, TOKEN_SERVICE, { kind: 'customer', body: customerE });
  check(custE.status === 201, `the customer wrote (${custE.status})`);
  await inThread(B.page, customerE);
  await think(1);
  const posts = [];
  const onPost = (r) => {
    if (r.method() === 'POST' && r.url().endsWith(`/api/tickets/${TICKET}/messages`)) posts.push(JSON.parse(r.postData() || '{}'));
  };
  B.page.on('request', onPost);
  await sendOf(B).click();
  const everything = B.page.getByRole('alert').filter({ hasText: 'wrote while you were writing' });
  await everything.waitFor({ timeout: WAIT }).then(() => check(true, "B's send is held"), () => check(false, "B's send is held"));
  const shownE = (await everything.textContent()) || '';
  check(shownE.includes(customerE) && shownE.includes(fromA), `the hold shows the customer's message and A's reply: ${shownE}`);
  await think(2);
  const custE2 = await api('POST', `/api/tickets/${TICKET}/messages`, TOKEN_SERVICE, { kind: 'customer', body: customerE2 });
  check(custE2.status === 201, `the customer wrote again while B read the hold (${custE2.status})`);
  await inThread(B.page, customerE2);
  await think(1);
  await everything.getByRole('button', { name: 'Send anyway' }).click();
  await waitIn(B.page, 'the send is held again, for the message that came while B read', (body) => [...document.querySelectorAll('[data-testid="duplicate-notice"]:not([hidden])')].some((e) => e.textContent.includes(body)), customerE2);
  await sleep(300);
  check(posts.length === 0, `nothing was sent while held (${posts.length})`);
  check(!(await storedMessages()).some((m) => m.body === replyE), 'B\'s reply is not stored');
  await shot(B, 'held-everything');
  await think(1);
  await B.page.getByRole('alert').filter({ hasText: customerE2 }).getByRole('button', { name: 'Send anyway' }).click();
  await waitIn(B.page, 'the second "Send anyway" sends', (sel) => document.querySelector(sel).value === '', t('composer-body'));
  B.page.off('request', onPost);
  const storedE = await storedMessages();
  const lastE = storedE.find((m) => m.body === customerE2);
  check(storedE.filter((m) => m.body === replyE).length === 1, "B's reply is stored once");
  check(posts.length === 1 && posts[0].seen_message_id === lastE.id, `it stated as seen the last message B was shown (${JSON.stringify(posts.map((p) => p.seen_message_id))}, ${lastE && lastE.id})`);

  // ---------------------------------------------------------------- not seen while reading further up
  // B reads further up a long thread with an empty composer; A's reply lands
  // below, off screen, without a draft to mark it: it is still not seen, so
  // B's reply written afterwards is refused (409) and shows it (a review's
  // duplicate went through: only replies that arrived during a draft counted).
  currentStep = 'unseen-while-reading';
  const scroll = await api('POST', '/api/tickets', A.token, { subject: 'Scroll test: a long conversation' });
  check(scroll.status === 201, `A opened a ticket (${scroll.status})`);
  const SCROLL = scroll.body.id;
  for (let i = 1; i <= 30; i++) {
    const n = await api('POST', `/api/tickets/${SCROLL}/messages`, A.token, { kind: 'note', body: `scroll note ${i}` });
    if (n.status !== 201) check(false, `note ${i}: ${n.status}`);
  }
  await B.page.getByRole('link', { name: /Scroll test/ }).click();
  await waitIn(B.page, 'B opens the long conversation', () => document.querySelectorAll('[role="log"] .message').length === 30);
  await B.page.getByRole('log', { name: 'Conversation' }).hover();
  for (let i = 0; i < 20; i++) await B.page.mouse.wheel(0, -400);
  await think(1);
  const fromA2 = `Reply from ${A.name}: I have answered the customer already.`;
  const newestS = Math.max(...(await api('GET', `/api/tickets/${SCROLL}`, A.token)).body.messages.map((m) => m.id));
  const byA2 = await api('POST', `/api/tickets/${SCROLL}/messages`, A.token, { kind: 'reply', body: fromA2, seen_message_id: newestS });
  check(byA2.status === 201, `A replied below B's view (${byA2.status})`);
  const offLi = B.page.locator('[role="log"] li').filter({ hasText: fromA2 });
  await offLi.waitFor({ state: 'attached', timeout: WAIT });
  await think(1.5);
  check(((await offLi.textContent()) || '').includes('New, not on screen yet'), 'A\'s reply is marked "New, not on screen yet"');
  const replyS2 = `Reply from ${B.name}: let me answer the customer.`;
  await composerOf(B).click();
  await B.page.keyboard.type(replyS2, { delay: 5 });
  await think(1);
  expected409.B.push(`/api/tickets/${SCROLL}/messages`);
  await B.page.keyboard.press('Control+Enter');
  const heldS = B.page.getByRole('alert').filter({ hasText: `${A.name} just replied` });
  await heldS.waitFor({ timeout: WAIT }).then(() => check(true, 'B\'s reply is refused and shows A\'s reply'), () => check(false, "B's reply is refused and shows A's reply"));
  check(((await heldS.textContent()) || '').includes(fromA2), 'the notice shows A\'s reply');
  const storedS = (await api('GET', `/api/tickets/${SCROLL}`, A.token)).body.messages;
  check(!storedS.some((m) => m.body === replyS2), 'nothing stored for B');
  await shot(B, 'unseen-while-reading');
  await heldS.getByRole('button', { name: 'Discard' }).click();
  await B.page.getByRole('link', { name: /Refund for order 1042/ }).click();
  await waitIn(B.page, 'B is back on the shared ticket', ([id]) => document.querySelector('[data-testid="ticket-view"] [data-testid="ticket-subject"]') && document.querySelector('[data-testid="ticket-view"]').dataset.ticketId === String(id), [TICKET]);

  // ---------------------------------------------------------------- a lost answer
  // A's note reaches the server, but the answer is lost (the connection
  // resets): the live event shows it was stored, so the composer is cleared
  // as if answered, and nothing is stored twice (a review's corrected text
  // was then thrown away: the retry reused the first attempt's client_id).
  currentStep = 'lost-answer';
  const lostBody = `Note from ${A.name}: checked the invoice, it is correct.`;
  let cut = 0;
  await A.page.route(`**/api/tickets/${TICKET}/messages`, async (route) => {
    if (route.request().method() !== 'POST' || cut) return route.fallback();
    cut += 1;
    await route.fetch(); // the server stores it; its answer never reaches the page
    await route.abort('connectionreset');
  });
  await A.page.getByTestId('composer-kind').selectOption('note');
  await composerOf(A).fill(lostBody);
  await think(1);
  await composerOf(A).press('Control+Enter');
  await waitIn(A.page, 'the live event clears the composer of the note whose answer was lost', (sel) => document.querySelector(sel).value === '', t('composer-body'));
  check(cut === 1, `one answer was cut (${cut})`);
  check(!(await visible(A.page, 'composer-error')), 'no "not sent" error is left');
  check((await storedMessages()).filter((m) => m.body === lostBody).length === 1, 'the note is stored once');
  await A.page.unroute(`**/api/tickets/${TICKET}/messages`);
  await A.page.getByTestId('composer-kind').selectOption('reply');

  // ---------------------------------------------------------------- a login link never switches an open console
  // A page that can set this tab's URL opens a login fragment for another
  // agent: the console stays A's and says the link was ignored.
  currentStep = 'login-link-ignored';
  await A.page.evaluate((token) => (location.hash = `#token=${encodeURIComponent(token)}`), B.token);
  await A.page.getByTestId('app-banner').waitFor({ timeout: WAIT }).then(() => check(true, 'A is told the link was ignored'), () => check(false, 'A is told the link was ignored'));
  check((await text(A.page, 'me-name')) === A.name, 'A is still logged in as A');
  check(!(await A.page.evaluate(() => location.hash.includes('token='))), 'the token is gone from the URL');
  await A.page.getByTestId('app-banner').getByRole('button', { name: 'Dismiss' }).click();
  await A.page.getByRole('link', { name: /Refund for order 1042/ }).click();
  await waitIn(A.page, 'A is back on the shared ticket', ([id]) => document.querySelector('[data-testid="ticket-view"] [data-testid="ticket-subject"]') && document.querySelector('[data-testid="ticket-view"]').dataset.ticketId === String(id), [TICKET]);

  // ---------------------------------------------------------------- typing and drafts (story 8)
  currentStep = 'typing-draft';
  const draftA = `Draft from ${A.name}: a partial refund is possible if`;
  const presenceOfA = B.page.getByRole('list', { name: 'Colleagues on this ticket' }).getByRole('img', { name: new RegExp(`^${A.name},`) });
  const aPresence = async () => (await presenceOfA.getAttribute('aria-label').catch(() => null)) || '';
  await composerOf(A).click();
  await A.page.keyboard.type(draftA, { delay: 20 });
  await waitIn(B.page, `B sees "${A.name}, typing a reply"`, ([name]) => !!document.querySelector(`[aria-label="${name}, typing a reply"]`), [A.name]);
  check(((await text(B.page, 'typing-indicator')) || '').includes(`${A.name} is typing a reply`), 'B\'s thread says "… is typing a reply…"');
  await waitIn(A.page, 'A\'s draft is saved as A types', () => [...document.querySelectorAll('[role="status"]')].some((e) => e.textContent === 'Draft saved'));
  await shotBoth('typing-reply');
  // A stops typing for 10 s: "has a draft", not "viewing".
  await sleep(10_000);
  check((await aPresence()) === `${A.name}, has a draft reply`, `after 10 s without typing B sees "${A.name}, has a draft reply" (${await aPresence()})`);
  check(((await text(B.page, 'typing-indicator')) || '').includes(`${A.name} has a draft reply`), 'B\'s thread says "… has a draft reply"');
  await shotBoth('has-a-draft');

  // Reload: the draft comes back.
  await A.page.reload();
  await waitIn(A.page, 'after a reload A\'s draft is restored', ([body]) => document.querySelector('textarea')?.value === body, [draftA]);
  // A ticket switch: leave for the other ticket (B then sees the draft in the list), come back.
  await A.page.getByRole('link', { name: /Printer on fire/ }).click();
  await waitIn(B.page, 'A is no longer among the viewers in B\'s view', ([id]) => !document.querySelector(`[data-testid="presence-${id}"]`), [A.id]);
  await waitIn(B.page, `B sees "${A.name} has an unsent reply" after A left`, ([name]) => (document.querySelector('[data-testid="colleague-drafts"]:not([hidden])')?.textContent || '').includes(`${name} has an unsent reply (just now)`), [A.name]);
  await shot(B, 'draft-after-leaving');
  await axeCheck(B, 'a colleague\'s unsent draft');
  await A.page.getByRole('link', { name: /Refund for order 1042/ }).click();
  await waitIn(A.page, 'after a ticket switch A\'s draft is restored', ([body]) => document.querySelector('textarea')?.value === body, [draftA]);
  // Another device: a new browser context logged in as A.
  const device = await browser.newContext({ viewport: { width: 1300, height: 900 }, baseURL: BASE });
  const laptop = await device.newPage();
  await laptop.goto(`/#token=${encodeURIComponent(A.token)}`);
  await laptop.getByRole('link', { name: /Refund for order 1042/ }).click();
  await laptop.waitForFunction((body) => document.querySelector('textarea')?.value === body, draftA, { timeout: WAIT }).then(
    () => check(true, 'on another device A\'s draft is restored'),
    () => check(false, 'on another device A\'s draft is restored'),
  );
  const laptopShot = `${String(++shotNo).padStart(2, '0')}-draft-other-device-A.png`;
  await laptop.screenshot({ path: path.join(SHOTS, laptopShot), fullPage: true });
  shots.push(laptopShot);
  await device.close();
  // Sent: the draft is gone, for A and for B.
  await A.page.keyboard.press('Control+End');
  await composerOf(A).press('End');
  await A.page.keyboard.type(' you send the invoice.', { delay: 5 });
  await sendOf(A).click();
  await waitIn(A.page, 'A sent the draft', () => document.querySelector('textarea')?.value === '');
  await waitIn(B.page, 'B no longer sees A\'s draft', () => !document.querySelector('[data-testid="colleague-drafts"]:not([hidden])'));
  await sleep(300);
  check((await api('GET', `/api/tickets/${TICKET}/draft`, A.token)).status === 404, 'A\'s draft is deleted on the server once sent');
  check(((await aPresence()) || '').endsWith('viewing'), `B sees A viewing again (${await aPresence()})`);

  // ---------------------------------------------------------------- idle after 5 minutes without input
  // Carol opens the ticket in a browser whose clock Playwright controls, and
  // touches nothing; the clock jumps 5 minutes: B sees Carol idle; a key
  // press brings her back to viewing.
  currentStep = 'idle-timer';
  const carolCtx = await browser.newContext({ viewport: { width: 1300, height: 900 }, baseURL: BASE });
  await carolCtx.clock.install();
  const carol = await carolCtx.newPage();
  await carol.goto(`/#token=${encodeURIComponent(CAROL.token)}`);
  await carol.getByRole('link', { name: /Refund for order 1042/ }).click();
  await waitPresence(B, CAROL, 'viewing', 'B sees Carol viewing');
  await carol.clock.fastForward('05:05');
  await waitPresence(B, CAROL, 'idle', 'after 5 minutes without input B sees Carol idle');
  check((await B.page.getAttribute(presenceState(CAROL), 'title')) === `${CAROL.name}: idle (tab in background)`, 'titled "idle"');
  await shot(B, 'idle-after-5-minutes');
  await carol.keyboard.press('Shift');
  await waitPresence(B, CAROL, 'viewing', 'a key press: B sees Carol viewing again');
  await carolCtx.close();
  await waitIn(B.page, 'Carol left: B no longer lists her', ([sel]) => !document.querySelector(sel), [presenceState(CAROL)]);

  // ---------------------------------------------------------------- tags
  currentStep = 'tags';
  check(JSON.stringify(await tagsIn(A.page)) === '["billing","refund"]', `A starts with billing, refund: ${JSON.stringify(await tagsIn(A.page))}`);
  check(JSON.stringify(await tagsIn(B.page)) === '["billing","refund"]', `B starts with billing, refund: ${JSON.stringify(await tagsIn(B.page))}`);
  await B.page.fill(t('tag-input'), 'VIP');
  await together('tag race', 'POST', `/api/tickets/${TICKET}/tags`, () =>
    Promise.all([A.page.click(t('tag-remove-billing')), B.page.click(t('tag-add'))]),
  );
  for (const agent of [A, B]) {
    await waitIn(
      agent.page,
      `${agent.key} ends with tags refund, vip`,
      () => JSON.stringify([...document.querySelectorAll('[data-testid="ticket-view"] [data-testid^="tag-chip-"]')].map((e) => e.dataset.tag).sort()) === '["refund","vip"]',
    );
  }
  // Let any late event land, then check again: nothing flips back.
  await sleep(500);
  for (const agent of [A, B]) {
    const tags = await tagsIn(agent.page);
    check(JSON.stringify(tags) === '["refund","vip"]', `${agent.key} still shows refund, vip after settling: ${JSON.stringify(tags)}`);
  }
  check((await B.page.inputValue(t('tag-input'))) === '', 'B\'s tag input is emptied');
  result.tags = await tagsIn(A.page);
  await shotBoth('tags');

  // ---------------------------------------------------------------- take
  currentStep = 'take';
  await together('take race', 'PATCH', `/api/tickets/${TICKET}`, () =>
    Promise.all([A.page.click(t('take-button')), B.page.click(t('take-button'))]),
  );
  // Both end showing the same assignee.
  for (const agent of [A, B]) {
    await waitIn(agent.page, `${agent.key} shows an assignee`, (sel) => !!document.querySelector(sel)?.dataset.assigneeId, t('assignee-name'));
  }
  const assigneeA = Number(await A.page.getAttribute(t('assignee-name'), 'data-assignee-id'));
  const assigneeB = Number(await B.page.getAttribute(t('assignee-name'), 'data-assignee-id'));
  check(assigneeA === assigneeB && [A.id, B.id].includes(assigneeA), `both views show the same assignee (A: ${assigneeA}, B: ${assigneeB})`);
  const owner = assigneeA === B.id ? B : A;
  const other = owner === A ? B : A;
  expected409[other.key].push(`/api/tickets/${TICKET}`); // its already_assigned
  result.take_winner = owner.key;
  for (const agent of [A, B]) {
    check((await text(agent.page, 'assignee-name')) === owner.name, `${agent.key} shows ${owner.name} as assignee`);
  }
  await waitIn(other.page, `${other.key} sees "Already taken by ${owner.name}"`, ([sel, name]) => {
    const el = document.querySelector(sel);
    return !!el && !el.hidden && el.textContent.includes(`Already taken by ${name}`);
  }, [t('already-taken'), owner.name]);
  check(!(await visible(owner.page, 'already-taken')), `${owner.key} (the owner) has no "already taken" notice`);
  check(await owner.page.isVisible(t('release-button')), `${owner.key} is offered "Unassign me"`);
  check(await other.page.isVisible(t('take-over')), `${other.key} is offered "Take over from ${owner.name}"`);
  await shot(other, 'take-loser');
  await shot(owner, 'take-owner');

  // ---------------------------------------------------------------- handing over (story 9)
  // The owner gives the ticket to Carol from the picker while the other agent
  // presses "Take over" (both PATCHes released together): exactly one wins.
  currentStep = 'assign';
  const picker = owner.page.getByLabel('Assign to');
  await owner.page.waitForFunction((name) => [...document.querySelectorAll('option')].some((o) => o.textContent === name), CAROL.name, { timeout: WAIT });
  check((await picker.locator('option').allTextContents()).includes(`${other.name}`), `the picker lists ${other.name} (GET /api/agents)`);
  await picker.selectOption({ label: CAROL.name });
  await think(1);
  await together('handover race', 'PATCH', `/api/tickets/${TICKET}`, () =>
    Promise.all([
      owner.page.getByRole('button', { name: 'Assign', exact: true }).click(),
      other.page.getByRole('button', { name: `Take over from ${owner.name}` }).click(),
    ]),
  );
  const names = { [A.id]: A.name, [B.id]: B.name, [CAROL.id]: CAROL.name };
  let finalAssignee = null;
  for (const agent of [A, B]) {
    await waitIn(agent.page, `${agent.key} shows Carol or ${other.key} as the assignee`, ([sel, ids]) => ids.includes(Number(document.querySelector(sel)?.dataset.assigneeId)), [t('assignee-name'), [CAROL.id, other.id]]);
  }
  const shownA = Number(await A.page.getAttribute(t('assignee-name'), 'data-assignee-id'));
  const shownB = Number(await B.page.getAttribute(t('assignee-name'), 'data-assignee-id'));
  check(shownA === shownB, `both views show the same assignee after the race (A: ${shownA}, B: ${shownB})`);
  finalAssignee = shownA;
  const handoverWon = finalAssignee === CAROL.id;
  const raceLoser = handoverWon ? other : owner;
  expected409[raceLoser.key].push(`/api/tickets/${TICKET}`); // its already_assigned
  await waitIn(raceLoser.page, `${raceLoser.key} (who lost) sees "Already taken by ${names[finalAssignee]}"`, ([name]) => [...document.querySelectorAll('[role="alert"]')].some((e) => !e.hidden && e.textContent.includes(`Already taken by ${name}`)), [names[finalAssignee]]);
  result.assignee = finalAssignee;
  await shot(owner, 'assign-owner');
  await shot(other, 'assign-other');

  // ---------------------------------------------------------------- direct SQL
  currentStep = 'sql-subject';
  const subject = `Refund for order 1042 (edited in SQL ${Date.now() % 100000})`;
  const lines = readline.createInterface({ input: process.stdin });
  const ack = new Promise((resolve) => lines.once('line', resolve));
  console.log(`SQL_UPDATE_SUBJECT ${subject}`);
  const answer = await Promise.race([ack, sleep(15_000).then(() => null)]);
  lines.close();
  check(answer !== null && answer.trim() === 'SQL_DONE', `the Rust side ran the UPDATE (answer: ${JSON.stringify(answer)})`);
  for (const agent of [A, B]) {
    await waitIn(agent.page, `${agent.key}'s subject field shows the SQL subject`, ([sel, s]) => document.querySelector(sel)?.value === s, [t('ticket-subject'), subject]);
    await waitIn(agent.page, `${agent.key}'s inbox row shows the SQL subject`, ([sel, s]) => (document.querySelector(sel)?.textContent || '').includes(s), [t(`inbox-row-${TICKET}`), subject]);
    await waitIn(agent.page, `${agent.key}'s window title follows`, (s) => document.title.includes(s), subject);
  }
  await shotBoth('sql-subject');

  // ---------------------------------------------------------------- channel and customer, live
  currentStep = 'channel-customer';
  await askRust('SQL_CHANNEL_CUSTOMER');
  for (const agent of [A, B]) {
    await waitIn(agent.page, `${agent.key}'s header shows the new channel and customer`, ([sel]) => {
      const head = document.querySelector(sel)?.textContent || '';
      return head.includes('chat') && head.includes('Frank Finch <frank@example.com>');
    }, ['.ticket-sub']);
  }

  // ---------------------------------------------------------------- history, live
  currentStep = 'history';
  await B.page.getByText('History', { exact: true }).click();
  const historyOf = (agent) => agent.page.getByRole('list', { name: 'History' });
  await waitIn(B.page, 'B\'s history lists the SQL subject change', ([s]) => [...document.querySelectorAll('[aria-label="History"] li')].some((li) => li.textContent.includes('A direct database write changed subject') && li.textContent.includes(s)), [subject]);
  check(((await historyOf(B).textContent()) || '').includes(`${A.name} added a note`), 'B\'s history names A\'s note');
  check(((await historyOf(B).textContent()) || '').includes('added tag vip'), 'B\'s history shows the tag change');
  const historyBefore = await historyOf(B).getByRole('listitem').count();
  await A.page.getByRole('complementary', { name: 'Ticket properties' }).getByLabel('Status').selectOption('open');
  await waitIn(B.page, 'B\'s history grows live: "… changed status new → open"', ([name]) => [...document.querySelectorAll('[aria-label="History"] li')].some((li) => li.textContent.includes(`${name} changed status new → open`)), [A.name]);
  check((await historyOf(B).getByRole('listitem').count()) === historyBefore + 1, 'exactly one history line was added');
  await waitIn(B.page, 'B\'s status select follows (open)', (sel) => document.querySelector(sel)?.value === 'open', t('ticket-status'));
  await shot(B, 'history');

  // ---------------------------------------------------------------- notifications
  currentStep = 'notifications';
  const notifButton = (agent) => agent.page.getByRole('button', { name: /^Notifications/ });
  // B's held reply (the held-duplicate step) is there.
  await notifButton(B).click();
  let listB = await notificationsOf(B);
  check(listB.some((n) => n.kind === 'held' && n.ticket === TICKET && n.text.includes(`was held: ${A.name} replied first`)), `B was told that the held reply was held: ${JSON.stringify(listB.map((n) => n.text))}`);
  await B.page.keyboard.press('Escape');
  check(await B.page.getByTestId('notifications-panel').isHidden(), 'Escape closes the list');
  const unreadBefore = listB.filter((n) => n.unread).length;
  // An assignment by direct SQL, then a customer message on that ticket.
  await askRust(`SQL_ASSIGN ${PRINTER} ${B.id}`);
  await waitIn(B.page, 'B\'s badge counts the assignment', ([n]) => (document.querySelector('[data-testid="notifications-button"]')?.innerText || '').replace(/\s+/g, ' ').trim() === `Notifications ${n} unread`, [unreadBefore + 1]);
  await waitIn(B.page, 'the tab title counts it too', ([n]) => document.title.startsWith(`(${n}) `), [unreadBefore + 1]);
  await waitIn(B.page, 'the inbox marks the ticket "new for you"', ([id]) => (document.querySelector(`[data-testid="inbox-row-${id}"]`)?.textContent || '').includes('new for you'), [PRINTER]);
  check(((await text(B.page, 'inbox-unread')) || '') === `${unreadBefore + 1} new`, `the inbox heading says "${unreadBefore + 1} new"`);
  const posted2 = await api('POST', `/api/tickets/${PRINTER}/messages`, TOKEN_SERVICE, { kind: 'customer', body: 'The printer is smoking now.', customer: { email: 'pat@example.com', name: 'Pat Printer' } });
  check(posted2.status === 201, `a customer wrote on ticket ${PRINTER} (${posted2.status})`);
  await waitIn(B.page, 'B\'s badge counts the customer message', ([n]) => (document.querySelector('[data-testid="notifications-button"]')?.innerText || '').replace(/\s+/g, ' ').trim() === `Notifications ${n} unread`, [unreadBefore + 2]);
  await notifButton(B).click();
  listB = await notificationsOf(B);
  check(listB.some((n) => n.kind === 'assigned' && n.ticket === PRINTER && n.text.includes(`A direct database write assigned #${PRINTER} “Printer on fire” to you`)), `B: "… assigned #${PRINTER} to you": ${JSON.stringify(listB.map((n) => n.text))}`);
  check(listB.some((n) => n.kind === 'customer' && n.ticket === PRINTER && n.text.includes('Pat Printer wrote on')), 'B: "Pat Printer wrote on …"');
  await shot(B, 'notifications');
  // Nobody is told about their own actions; A was told nothing of B's ticket.
  await notifButton(A).click();
  const listA = await notificationsOf(A);
  check(!listA.some((n) => n.ticket === PRINTER), `A has no notification about B's ticket: ${JSON.stringify(listA.map((n) => n.text))}`);
  for (const [agent, list] of [[A, listA], [B, listB]]) {
    check(!list.some((n) => n.kind === 'assigned' && n.ticket === TICKET), `${agent.key}: no "assigned" notification for ticket ${TICKET}, where every assignment was the agent's own or Carol's`);
  }
  await A.page.keyboard.press('Escape');
  // Opening the ticket from the list reads its notifications.
  await B.page.getByRole('link', { name: new RegExp(`assigned #${PRINTER}`) }).click();
  await waitIn(B.page, `B opened ticket ${PRINTER} from the list`, ([id]) => document.querySelector('[data-testid="ticket-view"]')?.dataset.ticketId === String(id), [PRINTER]);
  await waitIn(B.page, 'its notifications are read: the badge went down by two', ([n]) => (document.querySelector('[data-testid="notifications-button"]')?.innerText || '').replace(/\s+/g, ' ').trim() === (n ? `Notifications ${n} unread` : 'Notifications'), [unreadBefore]);
  await B.page.getByRole('link', { name: /Refund for order 1042/ }).click();
  await waitIn(B.page, 'B is back on the shared ticket', ([id]) => document.querySelector('[data-testid="ticket-view"] [data-testid="ticket-subject"]') && document.querySelector('[data-testid="ticket-view"]').dataset.ticketId === String(id), [TICKET]);

  // ---------------------------------------------------------------- a permanent gap
  // The Rust side moves the ticket two versions on with the triggers off and
  // writes only the second event: the server delivers it with a hole before
  // it that no re-subscribe can fill. The client backs off and then takes a
  // snapshot; it must not storm the server with re-subscribes. (A server
  // that notices the hole may send `reset` instead: the client then drops
  // the ticket's state and subscribes once without since.)
  currentStep = 'gap';
  const holeSubject = `Refund for order 1042 (after a hole ${Date.now() % 100000})`;
  const subsBefore = { A: subscribes.A.length, B: subscribes.B.length };
  const lines2 = readline.createInterface({ input: process.stdin });
  const ack2 = new Promise((resolve) => lines2.once('line', resolve));
  console.log(`SQL_HOLE ${holeSubject}`);
  const answer2 = await Promise.race([ack2, sleep(15_000).then(() => null)]);
  lines2.close();
  check(answer2 !== null && answer2.trim() === 'SQL_DONE', `the Rust side made the hole (answer: ${JSON.stringify(answer2)})`);
  for (const agent of [A, B]) {
    await waitIn(agent.page, `${agent.key}'s subject shows the state after the hole (from a snapshot)`, ([sel, s]) => document.querySelector(sel)?.value === s, [t('ticket-subject'), holeSubject], 15_000);
  }
  await sleep(3000); // anything still looping would show here
  for (const agent of [A, B]) {
    const sent = subscribes[agent.key].slice(subsBefore[agent.key]).filter((f) => f.ticket_id === TICKET);
    check(sent.length >= 1 && sent.length <= 6, `${agent.key} re-subscribed ${sent.length} times (backoff, then a snapshot), not a storm`);
    check(sent.some((f) => f.since === undefined), `${agent.key} finally subscribed without since (a snapshot)`);
    const gaps = sent.slice(1).map((f, i) => f.at - sent[i].at);
    check(gaps.every((g, i) => i === 0 || g >= gaps[i - 1] * 0.5), `${agent.key}'s waits between re-subscribes grow: ${gaps.join(', ')} ms`);
    const reset = resets[agent.key].filter((f) => f.ticket_id === TICKET).length;
    check(
      reset > 0 ? sent.length === reset && gapWarnings[agent.key] === 0 : gapWarnings[agent.key] === 1,
      `${agent.key}: ${reset ? `${reset} reset frame(s), answered by as many fresh subscribes` : 'no reset frame; the client warned once that it took a snapshot'} (warnings: ${gapWarnings[agent.key]}, subscribes: ${sent.length})`,
    );
    const state = await agent.page.getAttribute(t('conn-state'), 'data-state');
    check(state === 'live', `${agent.key} is still live`);
  }
  result.subject = holeSubject;
  await shotBoth('after-gap');

  // ---------------------------------------------------------------- long threads
  currentStep = 'load-earlier';
  await A.page.getByRole('link', { name: /Long thread/ }).click();
  await waitIn(A.page, 'the long thread opens with its newest 50 messages', () => document.querySelectorAll('[role="log"] .message').length === 50);
  check((await A.page.locator('[role="log"] .message-body').last().textContent()) === 'note 60', 'the newest message is last');
  await A.page.getByRole('button', { name: 'Load earlier messages' }).click();
  await waitIn(A.page, '"Load earlier messages" brings the 10 older ones', () => document.querySelectorAll('[role="log"] .message').length === 60);
  check((await A.page.locator('[role="log"] .message-body').first().textContent()) === 'note 1', 'the oldest message is first');
  check(!(await A.page.getByRole('button', { name: 'Load earlier messages' }).count()), 'no more "Load earlier" once everything is shown');
  await shot(A, 'load-earlier');
  await A.page.getByRole('link', { name: /Refund for order 1042/ }).click();
  await waitIn(A.page, 'A is back on the shared ticket', ([id]) => document.querySelector('[data-testid="ticket-view"]')?.dataset.ticketId === String(id) && !!document.querySelector('[data-testid="ticket-subject"]'), [TICKET]);

  // ---------------------------------------------------------------- accessibility
  currentStep = 'axe';
  await B.page.getByRole('button', { name: /^Notifications/ }).click();
  for (const agent of [A, B]) await axeCheck(agent, 'the ticket view');
  await B.page.keyboard.press('Escape');
  // The login form, as a new visitor sees it.
  const visitorCtx = await browser.newContext({ viewport: { width: 1300, height: 900 }, baseURL: BASE });
  const visitor = { key: 'visitor', page: await visitorCtx.newPage() };
  await visitor.page.goto('/');
  await visitor.page.getByLabel('Access token').waitFor({ timeout: WAIT });
  await axeCheck(visitor, 'the login form');
  await visitorCtx.close();

  // ---------------------------------------------------------------- access revoked (close code 4001)
  // Carol is logged in; an admin disables her: her socket is closed with
  // 4001, the console says why and shows the login form, and it does not
  // reconnect with the dead token.
  currentStep = 'revoked';
  const revokedCtx = await browser.newContext({ viewport: { width: 1300, height: 900 }, baseURL: BASE });
  const revoked = await revokedCtx.newPage();
  let sockets = 0;
  revoked.on('websocket', () => {
    sockets += 1;
  });
  await revoked.goto(`/#token=${encodeURIComponent(CAROL.token)}`);
  await revoked.waitForFunction((sel) => document.querySelector(sel)?.dataset.state === 'live', t('conn-state'), { timeout: WAIT });
  await askRust('DISABLE_CAROL');
  await revoked.getByRole('alert').filter({ hasText: 'Your access was revoked' }).waitFor({ timeout: 10_000 }).then(
    () => check(true, 'Carol is told "Your access was revoked…"'),
    () => check(false, 'Carol is told "Your access was revoked…"'),
  );
  check(await revoked.getByLabel('Access token').isVisible(), 'the login form is shown');
  const socketsThen = sockets;
  await sleep(3000);
  check(sockets === socketsThen && sockets === 1, `no reconnect with the revoked token (${sockets} WebSocket${sockets === 1 ? '' : 's'} opened)`);
  const revokedShot = `${String(++shotNo).padStart(2, '0')}-revoked-C.png`;
  await revoked.screenshot({ path: path.join(SHOTS, revokedShot), fullPage: true });
  shots.push(revokedShot);
  await revokedCtx.close();

  // ---------------------------------------------------------------- log out
  // Dana works in two tabs: one opened with a one-time login link (a
  // session of its own), one with her API token. "Log out" in the first
  // ends its token on the server (401 from then on, and no reconnect with
  // it); the second tab, and its token, go on.
  currentStep = 'logout';
  const danaCtx = await browser.newContext({ viewport: { width: 1300, height: 900 }, baseURL: BASE });
  const [linkTab, tokenTab] = [await danaCtx.newPage(), await danaCtx.newPage()];
  let linkSockets = 0;
  linkTab.on('websocket', () => {
    linkSockets += 1;
  });
  await linkTab.goto(`/#login=${encodeURIComponent(DANA.login)}`);
  await tokenTab.goto(`/#token=${encodeURIComponent(DANA.token)}`);
  for (const tab of [linkTab, tokenTab]) {
    await tab.waitForFunction((sel) => document.querySelector(sel)?.dataset.state === 'live', t('conn-state'), { timeout: WAIT });
  }
  const sessionToken = await linkTab.evaluate(() => sessionStorage.getItem('livedesk.token'));
  check(!!sessionToken && sessionToken !== DANA.token, 'the login link gave the first tab a session token of its own');
  check((await api('GET', '/api/me', sessionToken)).status === 200, 'the session token works before logging out');
  await linkTab.getByTestId('logout').click();
  await linkTab.getByLabel('Access token').waitFor({ timeout: WAIT }).then(
    () => check(true, 'after "Log out" the first tab shows the login form'),
    () => check(false, 'after "Log out" the first tab shows the login form'),
  );
  check((await linkTab.evaluate(() => sessionStorage.getItem('livedesk.token'))) === null, 'the tab forgot the token');
  const socketsAtLogout = linkSockets;
  await sleep(3000);
  check(linkSockets === socketsAtLogout, `no reconnect after logging out (${linkSockets} WebSocket(s) opened)`);
  const ended = await api('GET', '/api/me', sessionToken);
  check(ended.status === 401, `the logged-out token is refused by the server (${ended.status})`);
  check((await api('GET', '/api/me', DANA.token)).status === 200, "Dana's API token still works");
  const secondTab = await tokenTab.getAttribute(t('conn-state'), 'data-state');
  check(secondTab === 'live', `the second tab is still live (${secondTab})`);
  const logoutShot = `${String(++shotNo).padStart(2, '0')}-logged-out-D.png`;
  await linkTab.screenshot({ path: path.join(SHOTS, logoutShot), fullPage: true });
  shots.push(logoutShot);
  await danaCtx.close();

  // ---------------------------------------------------------------- still healthy
  currentStep = 'final';
  for (const agent of [A, B]) {
    const state = await agent.page.getAttribute(t('conn-state'), 'data-state');
    check(state === 'live', `${agent.key} is still live (${state})`);
    const ids = await agent.page.$$eval('[data-testid="conversation"] [data-testid^="message-"]', (els) => els.map((e) => e.dataset.testid));
    const storedCount = (await storedMessages()).length;
    check(new Set(ids).size === ids.length && ids.length === storedCount, `${agent.key}: the ${storedCount} stored messages, none doubled: ${ids.join(',')}`);
    check((await agent.page.$$(t('field-conflict-subject') + ':not([hidden])')).length === 0, `${agent.key}: no conflict notice on the subject`);
    const errors = await agent.page.$$eval('.field-error:not([hidden]), [data-testid="composer-error"]:not([hidden])', (els) => els.map((e) => e.textContent));
    check(errors.length === 0, `${agent.key}: no error shown in the view ${JSON.stringify(errors)}`);
  }
}

try {
  await main();
} catch (e) {
  if (e instanceof StepFailed) console.log(`STOP [${currentStep}] the later steps build on this one`);
  else check(false, `unexpected exception: ${e && e.stack ? e.stack : e}`);
  for (const agent of [A, B]) if (agent.page) await shot(agent, `failed-${currentStep}`).catch(() => {});
}

currentStep = 'problems';
for (const key of ['A', 'B']) {
  const expected = [...expected409[key]];
  for (const r of httpErrors[key]) {
    const i = r.status === 409 ? expected.indexOf(r.path) : -1;
    if (i >= 0) expected.splice(i, 1);
    else problems.push(`${key} unexpected HTTP ${r.status} for ${r.method} ${r.path}`);
  }
  check(expected.length === 0, `${key}: every expected 409 was answered (${JSON.stringify(expected409[key])})`);
}
check(problems.length === 0, `no console errors, page errors, CSP violations or failed requests${problems.length ? ':\n  ' + problems.join('\n  ') : ''}`);

closing = true;
await browser.close().catch(() => {});
console.log(`SCREENSHOTS ${SHOTS}: ${shots.join(' ')}`);
console.log(`RESULT ${JSON.stringify({ ...result, failures })}`);
process.exit(failures ? 1 : 0);
