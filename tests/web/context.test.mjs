// The studio's context assembly (assets/web/context.js) with a word tokenizer: each token is
// a word with the spaces before it, so depths and counts are easy to check by eye.
//   node --test tests/web/context.test.mjs
import test from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

// context.js is an ES module served to the browser as plain `.js`; Node before 22 reads a `.js`
// file outside a `"type": "module"` package as CommonJS, so the test imports its source as a
// module by URL (it imports nothing itself) and runs the same on every Node version.
const source = readFileSync(new URL('../../assets/web/context.js', import.meta.url), 'utf8');
const { assemble, suffixStart, activeEntries, chatTurns, toKobold, fromKobold } =
  await import('data:text/javascript;base64,' + Buffer.from(source).toString('base64'));

const vocab = new Map();
const words = [];
const tok = {
  encode: async (text) => (text.match(/\s*\S+|\s+$/g) || []).map((w) => {
    if (!vocab.has(w)) { vocab.set(w, words.length); words.push(w); }
    return vocab.get(w);
  }),
  decode: async (ids) => ids.map((i) => words[i]).join(''),
};

const base = { memory: '', note: '', noteDepth: 2, worldInfo: [], scan: 4, budget: 1000 };

test('memory first, world info next, the note two tokens before the end', async () => {
  const story = 'The keeper climbed the stairs and lit the great lamp';
  const a = await assemble({ ...base, story, memory: 'A story about Mara.', note: 'Keep it eerie.',
    worldInfo: [{ keys: ['lamp'], content: 'The lamp is cursed.' }, { keys: ['ship'], content: 'Ships never come.' }] }, tok);
  assert.deepEqual(a.parts.map((p) => p.kind), ['memory', 'world', 'story', 'note', 'story']);
  assert.equal(a.parts[0].text, 'A story about Mara.\n');
  assert.equal(a.parts[1].text, 'The lamp is cursed.\n');
  assert.equal(a.parts[4].text, ' great lamp');
  assert.equal(a.parts[4].tokens, 2);
  assert.equal(a.parts[3].text, "\n[Author's note: Keep it eerie.]\n");
  assert.equal(a.text, a.parts.map((p) => p.text).join(''));
  assert.equal(a.parts[2].text + a.parts[4].text, story);
  assert.equal(a.tokens, a.parts.reduce((n, p) => n + p.tokens, 0));
});

test('world info looks only at the last K tokens, case-insensitively', async () => {
  const wi = [{ keys: ['Lighthouse'], content: 'It is white.' }];
  const early = await assemble({ ...base, story: 'The lighthouse stood there and the sea was grey today', worldInfo: wi }, tok);
  assert.ok(!early.parts.some((p) => p.kind === 'world'));
  const late = await assemble({ ...base, story: 'The sea was grey near the LIGHTHOUSE', worldInfo: wi }, tok);
  assert.ok(late.parts.some((p) => p.kind === 'world'));
  assert.deepEqual(activeEntries([{ keys: [' '], content: 'x' }, { keys: ['a'], content: ' ' }], 'a b'), []);
});

test('context shift: memory stays, the oldest story is dropped', async () => {
  const story = 'one two three four five six seven eight nine ten';
  const a = await assemble({ ...base, story, memory: 'Memory here.', noteDepth: 0, budget: 6 }, tok);
  assert.equal(a.parts[0].kind, 'memory');
  const kept = a.parts.filter((p) => p.kind === 'story').map((p) => p.text).join('');
  // Memory is 3 tokens ("Memory", " here.", "\n"): 3 story tokens fit.
  assert.equal(kept, ' eight nine ten');
  assert.equal(a.dropped, story.length - kept.length);
  assert.ok(a.tokens <= 6);
});

test('suffixStart finds the text of the last n tokens', async () => {
  const text = 'a bb ccc dddd';
  const ids = await tok.encode(text);
  assert.equal(text.slice(await suffixStart(text, ids, 1, tok)), ' dddd');
  assert.equal(await suffixStart(text, ids, 0, tok), text.length);
  assert.equal(await suffixStart(text, ids, 99, tok), 0);
});

test('chat turns: notes as the system turn, the story as the user turn', async () => {
  const a = await assemble({ ...base, story: 'Write a poem about the sea', memory: 'You are a poet.', note: 'Rhyme.' }, tok);
  const t = chatTurns(a);
  assert.equal(t.user, 'Write a poem about the sea');
  assert.match(t.system, /^You are a poet\.\n\[Author's note: Rhyme\.\]$/);
});

test('KoboldAI story JSON round trip, and bad fields named', () => {
  const k = toKobold({ segments: ['Once upon a time', ' there was a lamp.'], memory: 'M', note: 'N', worldInfo: [{ keys: ['lamp', 'light'], content: 'bright' }] });
  assert.equal(k.prompt, 'Once upon a time');
  assert.deepEqual(k.actions, [' there was a lamp.']);
  assert.equal(k.worldinfo[0].key, 'lamp,light');
  const back = fromKobold(JSON.parse(JSON.stringify(k)));
  assert.deepEqual(back, { text: 'Once upon a time there was a lamp.', memory: 'M', note: 'N', worldInfo: [{ keys: ['lamp', 'light'], content: 'bright' }] });
  assert.throws(() => fromKobold({ actions: 'x' }), /actions/);
  assert.throws(() => fromKobold({ worldinfo: [{ key: 3 }] }), /worldinfo\[0\]\.key/);
  assert.throws(() => fromKobold(null), /JSON object/);
});
