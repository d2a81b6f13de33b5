// The TypeScript declarations against the code: `tsc --noEmit --strict`
// over a usage file that imports the package by name (so `exports` and
// `types` are exercised too), and a comparison of what the declarations
// name with what the module really exports. Needs no server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { createRequire } from 'node:module';
import * as mod from '../livedesk-client.js';

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const require = createRequire(import.meta.url);
const ts = require('typescript');

test('tsc --noEmit: test/usage.ts type-checks against livedesk-client.d.ts', async () => {
  const tsc = require.resolve('typescript/bin/tsc');
  try {
    await promisify(execFile)(process.execPath, [tsc, '-p', here('./tsconfig.json')], { cwd: here('..') });
  } catch (e) {
    assert.fail(`tsc failed:\n${e.stdout}${e.stderr}`);
  }
});

/** Exported names and the public members of each exported class, from the .d.ts. */
async function declared() {
  const file = here('../livedesk-client.d.ts');
  const source = ts.createSourceFile(file, await readFile(file, 'utf8'), ts.ScriptTarget.ES2022, true);
  const exports = new Set();
  const classes = new Map();
  const isExported = (n) => n.modifiers?.some((m) => m.kind === ts.SyntaxKind.ExportKeyword);
  for (const node of source.statements) {
    if (ts.isExportAssignment(node)) exports.add('default');
    if (!isExported(node)) continue;
    if (ts.isClassDeclaration(node)) {
      exports.add(node.name.text);
      const members = { static: new Set(), instance: new Set() };
      for (const m of node.members) {
        if (!m.name || ts.isConstructorDeclaration(m)) continue;
        const isStatic = m.modifiers?.some((x) => x.kind === ts.SyntaxKind.StaticKeyword);
        (isStatic ? members.static : members.instance).add(m.name.text);
      }
      classes.set(node.name.text, members);
    } else if (ts.isFunctionDeclaration(node)) {
      exports.add(node.name.text);
    } else if (ts.isVariableStatement(node)) {
      for (const d of node.declarationList.declarations) exports.add(d.name.text);
    }
  }
  return { exports, classes };
}

test('the declarations name every runtime export and nothing else', async () => {
  const { exports } = await declared();
  assert.deepEqual([...exports].sort(), Object.keys(mod).sort());
  assert.equal(mod.default, mod.LivedeskClient);
});

test('every public member of LivedeskClient and ApiError is declared, and every declared one exists', async () => {
  const { classes } = await declared();
  const client = new mod.LivedeskClient({ baseUrl: 'http://127.0.0.1:1', token: 't' });
  const error = new mod.ApiError(409, { error: { code: 'x', message: 'y' } });
  for (const [name, instance] of [['LivedeskClient', client], ['ApiError', error]]) {
    const cls = mod[name];
    const runtime = new Set([
      ...Object.getOwnPropertyNames(cls.prototype),
      ...Object.keys(instance),
    ].filter((k) => k !== 'constructor' && !k.startsWith('_')));
    const statics = new Set(Object.getOwnPropertyNames(cls).filter((k) => !['length', 'name', 'prototype'].includes(k)));
    const d = classes.get(name);
    assert.ok(d, `${name} is declared as a class`);
    // `name` and `message` come from Error; `stack` too.
    const inherited = name === 'ApiError' ? ['name', 'message', 'stack'] : [];
    const declaredInstance = [...d.instance].filter((k) => !inherited.includes(k)).sort();
    const runtimeInstance = [...runtime].filter((k) => !inherited.includes(k)).sort();
    assert.deepEqual(declaredInstance, runtimeInstance, `${name}: instance members`);
    assert.deepEqual([...d.static].sort(), [...statics].sort(), `${name}: static members`);
  }
  assert.deepEqual(Object.keys(mod.ConnectionState), ['CONNECTING', 'LIVE', 'RECONNECTING', 'OFFLINE']);
});
