// The studio page end to end in headless Chromium, against either engine:
//
//   node tests/web/studio.mjs browser   quill in the page (target/web from scripts/web.sh
//                                       --build, WebGPU on SwiftShader) with llama-tiny
//   node tests/web/studio.mjs server    `quill serve` (target/release/quill, lavapipe) with
//                                       SmolLM2 when fetched, else llama-tiny; the page from
//                                       the server at /
//
// Types a story, sets Memory, an Author's Note at depth 2 and a World Info entry, Continues,
// and checks in the context view that each part sits where it should; Retry, Undo and Redo
// restore the right texts; Drafts shows 3 and keeping one appends it; a click on a token
// shows its alternatives and choosing one continues from it; a reload keeps everything. On
// the in-browser engine, a story longer than the context is continued twice: the second time
// the context shifts (the KV rows of the text that stays move instead of being read again). On
// the server it also kills the server mid-generation (SIGKILL), checks that the story file
// holds the text up to the last token, restarts it and reopens the story. Screenshots of
// each state go to target/web-screenshots/studio-<engine>-<state>.png.
import { launch, serveStatic } from './chromium.mjs';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const root = path.resolve(new URL('../..', import.meta.url).pathname);
const shots = path.join(root, 'target/web-screenshots');
const which = process.argv[2] || 'browser';
if (!['browser', 'server'].includes(which)) throw new Error(`unknown engine ${which}: browser or server`);
const models = process.env.QUILL_MODELS || path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'quill/models');
const smollm2 = path.join(models, 'SmolLM2-135M-Instruct.Q4_1.gguf');
const timeout = which === 'server' ? 300e3 : 180e3;

let server = null; // the quill serve child process
const KEY = 'studio-test-key'; // the server wants it: the page asks for it once per tab
let staticServer = null;
const storiesDir = fs.mkdtempSync(path.join(os.tmpdir(), 'quill-stories-'));
const serveModel = fs.existsSync(smollm2) ? smollm2 : path.join(root, 'tests/fixtures/llama-tiny');

// Starts `quill serve` on a free port; resolves to its base URL once it listens.
function startServer() {
  return new Promise((ok, fail) => {
    const bin = path.join(root, 'target/release/quill');
    const child = spawn(bin, ['serve', '--model', serveModel, '--port', '0', '--parallel', '3', '--ctx', '1024', '--stories', storiesDir, '--api-key', KEY], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => {
      err += d;
      const m = /listening on (http:\/\/[\d.:]+)\n/.exec(err); // a whole line: stderr comes in pieces
      if (m && !child.base) { child.base = `${m[1]}/`; ok(child); }
    });
    child.on('exit', (code) => { if (!child.base) fail(new Error(`quill serve exited (${code}): ${err}`)); });
    child.log = () => err;
  });
}

// A static server for target/web (the in-browser engine's page).
async function startStatic() {
  const served = await serveStatic(path.join(root, 'target/web'));
  staticServer = served.server;
  return served.base;
}

const base = which === 'server' ? (server = await startServer()).base : await startStatic();
const browser = await launch({ width: 1200, height: 1000 });
const page = browser.pages()[0] || await browser.newPage();
const log = [];
page.on('console', (m) => log.push(`console.${m.type()}: ${m.text()}`));
page.on('pageerror', (e) => log.push(`page error: ${e.message}`));

async function finish(code) {
  await browser.close().catch(() => {});
  if (server) server.kill('SIGKILL');
  if (staticServer) staticServer.close();
  process.exit(code);
}
async function fail(why) {
  fs.mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, `studio-${which}-failed.png`), fullPage: true }).catch(() => {});
  console.error(`FAIL (studio, ${which}): ${why}\n${log.slice(-20).join('\n')}${server ? `\nserver: ${server.log().slice(-2000)}` : ''}`);
  await finish(1);
}
const check = async (ok, why) => { if (!ok) await fail(typeof why === 'function' ? await why() : why); };
async function shot(state) {
  fs.mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, `studio-${which}-${state}.png`), fullPage: true });
}

const story = () => page.evaluate(() => document.getElementById('story').textContent);
const tokens = () => page.$$eval('#story span.tok', (s) => s.length);
async function waitWritten(what) {
  await page.waitForFunction(() => document.getElementById('story').dataset.done === 'true', null, { timeout });
  const summary = await page.textContent('#summary');
  await check(!/Error/.test(summary), `${what}: ${summary}`);
  return summary;
}
async function click(sel) {
  await page.waitForSelector(`${sel}:not([disabled])`, { timeout });
  await page.click(sel);
}

// The page on quill serve: once the model is ready it asks for the API key (each origin once).
async function serverReady(mustAsk) {
  await page.waitForFunction(() => /API key|model .* \(context/.test(document.getElementById('engine').textContent), null, { timeout });
  const asked = await page.isVisible('#api-key');
  await check(asked || !mustAsk, 'the server wants an API key but the page did not ask for it');
  if (asked) {
    await page.fill('#api-key', KEY);
    await page.dispatchEvent('#api-key', 'change');
  }
  await page.waitForFunction(() => /model .* \(context/.test(document.getElementById('engine').textContent), null, { timeout });
}

let firstOpen = true;
async function open() {
  await page.goto(base);
  if (which === 'browser') {
    await page.waitForFunction(() => /^GPU:|cannot run|no WebGPU/.test(document.getElementById('gpu').textContent), null, { timeout: 120e3 });
    await check((await page.textContent('#gpu')).startsWith('GPU:'), async () => `no WebGPU: ${await page.textContent('#gpu')}`);
    // The list fills after the GPU line (models.json is fetched then).
    await page.waitForFunction(() => [...document.querySelectorAll('#served option')].some((o) => o.textContent.includes('llama-tiny')), null, { timeout: 30e3 }).catch(() => {});
    const option = await page.$$eval('#served option', (os) => os.find((o) => o.textContent.includes('llama-tiny'))?.value);
    await check(option, 'the page lists no llama-tiny model');
    await page.selectOption('#served', option);
    await page.click('#load-served');
    await page.waitForFunction(() => /^Loaded|Error|does not fit/.test(document.getElementById('model-status').textContent), null, { timeout });
    const status = await page.textContent('#model-status');
    await check(status.startsWith('Loaded'), `loading: ${status}`);
  } else {
    await serverReady(firstOpen);
    firstOpen = false;
  }
  await page.waitForSelector('#continue:not([disabled])', { timeout });
}

try {
  await open();
  console.log(await page.textContent('#engine'));

  // The story and its notes.
  const start = 'The keeper climbed the stairs of the lighthouse and lit the lamp';
  await page.fill('#story', start);
  await page.fill('#memory', 'This is a story about Mara, the last lighthouse keeper.');
  await page.fill('#note', 'Write in a calm voice.');
  await page.fill('#note-depth', '2');
  await page.click('#wi-add');
  await page.fill('.wi-keys', 'lamp');
  await page.fill('.wi-content', 'The lamp burns whale oil and never goes out.');
  await page.click('#sampling summary');
  await page.fill('#max_tokens', '10');
  await page.fill('#temperature', '1');
  await page.fill('#top_k', '0');
  await page.fill('#seed', '11');
  await page.fill('#probs', '5');
  await page.check('#ignore_eos');
  await page.waitForTimeout(900); // the typing settles into the history

  // Continue, then the context view: memory, world info, story, the note, the last 2 tokens.
  await click('#continue');
  await waitWritten('Continue');
  const t1 = await story();
  await check(t1.startsWith(start) && t1.length > start.length && (await tokens()) > 0, `after Continue the story is ${JSON.stringify(t1)}`);
  await page.click('#context-view summary');
  const parts = await page.$$eval('#context mark.part', (ms) => ms.map((m) => ({ kind: m.dataset.part, text: m.textContent, tokens: Number(m.dataset.tokens) })));
  const kinds = parts.map((p) => p.kind).join(' ');
  await check(kinds === 'memory world story note story', `context parts ${kinds}`);
  await check(parts[0].text.startsWith('This is a story about Mara'), `memory part ${JSON.stringify(parts[0].text)}`);
  await check(parts[1].text.includes('whale oil'), `world info part ${JSON.stringify(parts[1].text)}`);
  await check(parts[3].text.includes("Author's note: Write in a calm voice."), `note part ${JSON.stringify(parts[3].text)}`);
  await check(parts[2].text + parts[4].text === start, `the story parts ${JSON.stringify(parts[2].text)} + ${JSON.stringify(parts[4].text)} are not the story`);
  await check(parts[4].tokens === 2 && parts[4].text.length > 0 && start.endsWith(parts[4].text), `the note sits ${parts[4].tokens} tokens (${JSON.stringify(parts[4].text)}) before the end, not 2`);
  console.log(`context: ${parts.map((p) => `${p.kind}(${p.tokens})`).join(' ')}; tail after the note ${JSON.stringify(parts[4].text)}`);
  await shot('context');

  // Retry writes the last generation again; Undo and Redo walk back and forth.
  await click('#retry');
  await waitWritten('Retry');
  const t2 = await story();
  await check(t2.startsWith(start) && t2 !== t1, `Retry gave ${JSON.stringify(t2)} after ${JSON.stringify(t1)}`);
  await shot('retry');
  const walk = async (button, want, what) => {
    await click(button);
    const now = await story();
    await check(now === want, `${what}: ${JSON.stringify(now)}, expected ${JSON.stringify(want)}`);
  };
  await walk('#undo', t1, 'Undo after Retry');
  await walk('#undo', start, 'a second Undo');
  await walk('#redo', t1, 'Redo');
  await walk('#redo', t2, 'a second Redo');
  console.log('retry, undo, undo, redo, redo: the right texts');

  // Drafts: 3 side by side; keeping the second appends it.
  await page.selectOption('#draft-count', '3');
  await click('#drafts-button');
  await page.waitForFunction(() => document.getElementById('drafts').dataset.done === 'true', null, { timeout });
  await check(!/Error/.test(await page.textContent('#summary')), async () => `drafts: ${await page.textContent('#summary')}`);
  const drafts = await page.$$eval('#drafts .draft-text', (ds) => ds.map((d) => d.textContent));
  await check(drafts.length === 3 && drafts.every((d) => d.length > 0), `drafts: ${JSON.stringify(drafts)}`);
  await check(new Set(drafts).size > 1, `the 3 drafts are the same text: ${JSON.stringify(drafts)}`);
  await shot('drafts');
  await page.click('#drafts .draft:nth-of-type(2) .keep');
  const t3 = await story();
  await check(t3 === t2 + drafts[1], `after keeping draft 2 the story is ${JSON.stringify(t3)}`);
  console.log(`drafts: ${JSON.stringify(drafts)}; kept the second`);

  // The probability view: a click on a generated token shows its alternatives; choosing one
  // cuts the story there, puts it in and continues.
  // A token with visible text (a newline-only token has no box to click).
  const spans = [];
  for (const s of await page.$$('#story span.tok')) {
    if (await s.evaluate((e) => e.textContent.trim().length > 0 && e.getClientRects().length > 0)) spans.push(s);
  }
  await check(spans.length > 0, 'no generated token with visible text to click');
  const target = spans[Math.floor(spans.length / 2)];
  await target.click();
  await page.waitForSelector('#alts:not([hidden]) button.alt', { timeout: 10e3 });
  // The alternatives must be the clicked token's: the caret a click leaves at the end of the
  // token before once showed that one's instead (and the branch cut the story there).
  await page.waitForTimeout(300);
  await check(await target.evaluate((s) => s.classList.contains('chosen')), async () => `clicked ${JSON.stringify(await target.evaluate((s) => s.dataset.t))}; the alternatives shown are for ${JSON.stringify(await page.textContent('#alts'))}`);
  const alts = await page.$$eval('#alts button.alt', (bs) => bs.map((b) => b.dataset.t));
  const here = await target.evaluate((s) => ({ t: s.dataset.t, before: [...s.parentNode.childNodes].slice(0, [...s.parentNode.childNodes].indexOf(s)).map((n) => n.textContent).join('') }));
  await check(alts.length >= 2, `alternatives shown: ${JSON.stringify(alts)}`);
  await shot('alternatives');
  const pick = alts.findIndex((a) => a !== here.t && a.length > 0);
  await check(pick >= 0, `no alternative differs from ${JSON.stringify(here.t)}`);
  await page.click(`#alts button.alt >> nth=${pick}`);
  const branched = await waitWritten('branching');
  // The browser engine keeps its session between calls: the story before the branch is cached.
  if (which === 'browser') await check(/ (\d+) tokens of the context came from the cache/.test(branched) && Number(/ (\d+) tokens of the context/.exec(branched)[1]) > 20, `branching reread the whole context: ${branched}`);
  const t4 = await story();
  if (!t4.startsWith(here.before + alts[pick])) console.log(`before the branch: ${JSON.stringify(here.before)}, chosen ${JSON.stringify(alts[pick])} in place of ${JSON.stringify(here.t)}`);
  await check(t4.startsWith(here.before + alts[pick]) && t4.length > (here.before + alts[pick]).length, `after choosing ${JSON.stringify(alts[pick])} the story is ${JSON.stringify(t4)}`);
  console.log(`branch: ${JSON.stringify(here.t)} -> ${JSON.stringify(alts[pick])}, then written on (${/\d+ tokens of the context came from the cache/.exec(branched)?.[0] || 'no cache figure from this engine'})`);
  await shot('branched');

  // A reload keeps the story, its tokens and the notes.
  await page.waitForTimeout(1500);
  const toks = await tokens();
  await page.reload();
  await page.waitForFunction((t) => document.getElementById('story').textContent === t, t4, { timeout: 60e3 }).catch(() => {});
  await check(await story() === t4, async () => `after a reload the story is ${JSON.stringify(await story())}`);
  await check(await tokens() === toks, async () => `after a reload ${await tokens()} tokens, before ${toks}`);
  await check(await page.inputValue('#seed') === '11' && await page.inputValue('#max_tokens') === '10', 'after a reload the sampler settings are not back');
  await check(await page.inputValue('#memory') === 'This is a story about Mara, the last lighthouse keeper.' && await page.inputValue('#note') === 'Write in a calm voice.'
    && await page.inputValue('#note-depth') === '2' && await page.inputValue('.wi-content') === 'The lamp burns whale oil and never goes out.', 'after a reload the notes are not all back');
  await walk('#undo', here.before + alts[pick], 'Undo after a reload');
  await walk('#redo', t4, 'Redo after a reload');
  console.log(`reload: story (${t4.length} characters, ${toks} tokens), notes and history kept`);

  // KoboldAI story JSON: Export holds the story and its notes; Import brings one in.
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export')]);
  const k = JSON.parse(fs.readFileSync(await download.path(), 'utf8'));
  await check(k.prompt + k.actions.join('') === t4 && k.actions.length > 0 && k.memory.startsWith('This is a story about Mara') && k.authorsnote === 'Write in a calm voice.'
    && k.worldinfo[0].key === 'lamp' && k.worldinfo[0].content.includes('whale oil'), `exported ${JSON.stringify(k).slice(0, 400)}`);
  const kobold = path.join(storiesDir, 'kobold.json');
  fs.writeFileSync(kobold, JSON.stringify({ gamestarted: true, prompt: 'Imported start.', actions: [' More.'], memory: 'IM', authorsnote: 'IN', worldinfo: [{ key: 'sea,ship', content: 'The sea is cold.' }] }));
  await page.setInputFiles('#import', kobold);
  await page.waitForFunction(() => document.getElementById('story').textContent === 'Imported start. More.', null, { timeout: 10e3 }).catch(() => {});
  await check(await story() === 'Imported start. More.' && await page.inputValue('#memory') === 'IM' && await page.inputValue('#note') === 'IN'
    && await page.inputValue('.wi-keys') === 'sea, ship' && await page.inputValue('.wi-content') === 'The sea is cold.', async () => `after importing: ${JSON.stringify(await story())}`);
  await walk('#undo', t4, 'Undo after an import');
  console.log(`KoboldAI JSON: exported ${k.actions.length} actions after the prompt; imported one back; Undo returns the story`);

  if (which === 'browser') {
    // Context shift: a story longer than the context (llama-tiny's 256 positions). The first
    // Continue reads what fits; the second, after the story grew, moves the KV rows of the
    // story text that stays (the oldest dropped) instead of reading it again. The reload above
    // left no model loaded: load it again.
    await open();
    if (!(await page.isVisible('#max_tokens'))) await page.click('#sampling summary');
    await page.fill('#max_tokens', '6');
    const long = Array.from({ length: 40 }, (_, i) => `The keeper counted wave ${i} and wrote it down.`).join(' ');
    await page.fill('#story', long);
    await page.waitForTimeout(900);
    await click('#continue');
    await waitWritten('a story longer than the context');
    const dropped = await page.textContent('#context-count');
    await check(/no longer fit/.test(dropped), `the story should outgrow the context: ${dropped}`);
    await click('#continue');
    const shifted = await waitWritten('the next passage after a context shift');
    const moved = / (\d+) tokens of the context came from the cache \((\d+) of them moved by a context shift\)/.exec(shifted);
    await check(moved && Number(moved[2]) > 100, `the second Continue did not shift the context: ${shifted}`);
    await check((await story()).startsWith(long), 'the story lost its start (only the context drops it)');
    console.log(`context shift: ${dropped.trim()}; then ${moved[0].trim()}`);
  }

  if (which === 'server') {
    // Chat / instruct: the story is the writer's request, the model's answer is appended.
    await page.selectOption('#mode', 'chat');
    await page.fill('#story', 'Write one sentence about the sea.');
    await page.waitForTimeout(900);
    await click('#continue');
    await waitWritten('chat mode');
    const answered = await story();
    await check(answered.startsWith('Write one sentence about the sea.\n\n') && answered.length > 36 && (await tokens()) > 0, `chat mode: ${JSON.stringify(answered)}`);
    console.log(`chat / instruct: ${JSON.stringify(answered)}`);
    await shot('chat');
    await page.selectOption('#mode', 'story');
    await page.fill('#story', t4);
    await page.waitForTimeout(900);

    // Kill the server while it writes: the story file holds the text up to the last token.
    await open();
    await check(await page.inputValue('#seed') === '11', 'the sampler settings were not kept');
    if (!(await page.isVisible('#max_tokens'))) await page.click('#sampling summary');
    await page.fill('#max_tokens', '400');
    const before = await tokens();
    await click('#continue');
    await page.waitForFunction((n) => document.querySelectorAll('#story span.tok').length >= n + 12, before, { timeout });
    server.kill('SIGKILL');
    await page.waitForTimeout(1500);
    const shown = await story();
    const lastToken = await page.$$eval('#story span.tok', (s) => s[s.length - 1].textContent);
    const file = JSON.parse(fs.readFileSync(path.join(storiesDir, 'my story.json'), 'utf8'));
    const missing = shown.slice(file.text.length);
    await check(shown.startsWith(file.text) && (missing === '' || missing === lastToken), `killed mid-story: the page shows ${JSON.stringify(shown.slice(-80))}, the file holds ${JSON.stringify(file.text.slice(-80))}`);
    console.log(`killed the server after ${(await tokens()) - before} new tokens: the file misses ${missing === '' ? 'nothing' : `only the last token ${JSON.stringify(missing)}`}`);
    server = await startServer();
    const again = server.base;
    const opened = await page.goto(again);
    console.log(`restarted on ${again}: GET / answered ${opened?.status()}`);
    await serverReady(true); // a new origin: the tab's key is not there
    await page.waitForFunction((t) => document.getElementById('story').textContent === t, file.text, { timeout: 60e3 }).catch(() => {});
    await check(await story() === file.text, async () => `after the restart the page opens ${JSON.stringify((await story()).slice(-80))}`);
    await shot('after-kill');
    console.log('restarted: the page opens the story as saved');

    // Switching to another story while the one shown cannot be saved is refused: the story
    // stays in the page (the name field goes back to it) and is saved once saves go through.
    const storyFile = path.join(storiesDir, 'my story.json');
    await page.route('**/stories/**', (r) => r.request().method() === 'PUT'
      ? r.fulfill({ status: 503, contentType: 'application/json', body: JSON.stringify({ error: { message: 'disk full (test)' } }) })
      : r.continue());
    await page.fill('#memory', 'Typed while saves fail.');
    await page.dispatchEvent('#memory', 'input');
    await page.fill('#story-name', 'another story');
    await page.dispatchEvent('#story-name', 'change');
    await page.waitForFunction(() => /^Not switched/.test(document.getElementById('saved').textContent), null, { timeout: 30e3 }).catch(() => {});
    await check(await page.inputValue('#story-name') === 'my story' && await page.inputValue('#memory') === 'Typed while saves fail.' && await story() === file.text
      && !fs.existsSync(path.join(storiesDir, 'another story.json')),
      async () => `a switch while saves fail: the name field shows ${JSON.stringify(await page.inputValue('#story-name'))}, Memory ${JSON.stringify(await page.inputValue('#memory'))}; the page says ${JSON.stringify(await page.textContent('#saved'))}`);
    console.log(`a switch while saves fail is refused: ${JSON.stringify(await page.textContent('#saved'))}`);
    await page.unroute('**/stories/**');
    let kept = JSON.parse(fs.readFileSync(storyFile, 'utf8'));
    for (let i = 0; i < 80 && kept.memory !== 'Typed while saves fail.'; i++) {
      await page.waitForTimeout(250);
      kept = JSON.parse(fs.readFileSync(storyFile, 'utf8'));
    }
    await check(kept.memory === 'Typed while saves fail.' && kept.text === file.text, async () => `after saves came back the file holds Memory ${JSON.stringify(kept.memory)}; the page says ${JSON.stringify(await page.textContent('#saved'))}`);
    console.log('then the retry saved it');

    // A story the page saved in its older format (tests/fixtures/studio-story-v1.json) opens,
    // tokens and notes included, and is saved back in quill's story format.
    const legacy = JSON.parse(fs.readFileSync(path.join(root, 'tests/fixtures/studio-story-v1.json'), 'utf8'));
    fs.writeFileSync(path.join(storiesDir, 'old one.json'), JSON.stringify(legacy));
    await page.fill('#story-name', 'old one');
    await page.dispatchEvent('#story-name', 'change');
    await page.waitForFunction((t) => document.getElementById('story').textContent === t, legacy.text, { timeout: 30e3 }).catch(() => {});
    await check(await story() === legacy.text && await tokens() === legacy.pieces.filter((p) => p.lp !== undefined).length && await page.inputValue('#memory') === legacy.memory,
      async () => `the old story opens as ${JSON.stringify((await story()).slice(0, 80))} with ${await tokens()} tokens`);
    await page.fill('#memory', 'Saved again.');
    await page.dispatchEvent('#memory', 'input');
    // The page saves a moment after the last edit: wait (up to 20 s) for the file to change.
    const oldFile = path.join(storiesDir, 'old one.json');
    let resaved = JSON.parse(fs.readFileSync(oldFile, 'utf8'));
    for (let i = 0; i < 80 && resaved.memory !== 'Saved again.'; i++) {
      await page.waitForTimeout(250);
      resaved = JSON.parse(fs.readFileSync(oldFile, 'utf8'));
    }
    await check(resaved.memory === 'Saved again.' && resaved.text === legacy.text && Array.isArray(resaved.studio?.pieces) && !('pieces' in resaved)
      && resaved.history.every((h) => typeof h === 'string'), async () => `the old story was saved back as ${JSON.stringify(resaved).slice(0, 300)}; the page says ${JSON.stringify(await page.textContent('#saved'))}`);
    console.log(`an old-format page story opens (${await tokens()} tokens) and saves in quill's story format`);
  }
  console.log(`RESULT studio ${which}: all checks passed; screenshots in ${path.relative(root, shots)}/studio-${which}-*.png`);
  await finish(0);
} catch (e) {
  await fail(e.stack || String(e));
}
