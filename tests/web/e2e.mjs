// End-to-end test of quill's page (target/web, built by scripts/web.sh --build) in headless
// Chromium on WebGPU (SwiftShader without a GPU). Serves the page on 127.0.0.1, loads a
// model from the page's list, presses Continue, checks that the text streams in piece by piece,
// and saves a screenshot under target/web-screenshots/.
//
//   node tests/web/e2e.mjs llama-tiny   the tiny test model: also checks the weights cache
//                                       (a reload loads without a second download) and the
//                                       per-pass profile where the browser has timestamps
//                                       and that Cancel stops it; then loads the same model
//                                       through the folder picker
//   node tests/web/e2e.mjs smollm2      SmolLM2-135M for a few greedy tokens, which must be
//                                       those of Hugging Face transformers
//                                       (tests/fixtures/smollm2/reference.json); prints tokens/s
import { launch, serveStatic } from './chromium.mjs';
import fs from 'node:fs';
import path from 'node:path';

const root = path.resolve(new URL('../..', import.meta.url).pathname);
const site = path.join(root, 'target/web');
const shots = path.join(root, 'target/web-screenshots');
const which = process.argv[2] || 'llama-tiny';
const smollm2Reference = JSON.parse(fs.readFileSync(path.join(root, 'tests/fixtures/smollm2/reference.json'))).prompts.once_upon;
const runs = {
  'llama-tiny': { option: 'llama-tiny', prompt: 'Once upon a time, in a lighthouse at the edge of the world,', maxTokens: 24, loadTimeout: 120e3, writeTimeout: 180e3 },
  // Greedy without a repetition penalty, as transformers' reference; 6 tokens whose margins are >= 0.15.
  smollm2: { option: 'SmolLM2', prompt: smollm2Reference.text, expect: smollm2Reference.greedy_text, maxTokens: 6, loadTimeout: 600e3, writeTimeout: 600e3 },
};
const run = runs[which];
if (!run) throw new Error(`unknown run ${which}: one of ${Object.keys(runs).join(', ')}`);

// target/web, counting the GETs of each path.
const { base, server, gets } = await serveStatic(site);
const downloads = (p) => gets.get(p)?.full || 0;

const browser = await launch({ width: 1100, height: 1300 });
const fail = async (page, why) => {
  fs.mkdirSync(shots, { recursive: true });
  if (page) await page.screenshot({ path: path.join(shots, `${which}-failed.png`), fullPage: true }).catch(() => {});
  console.error(`FAIL (${which}): ${why}`);
  await browser.close();
  server.close();
  process.exit(1);
};

try {
  const page = browser.pages()[0] || await browser.newPage();
  const log = [];
  page.on('console', (m) => log.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log.push(`page error: ${e.message}`));

  const openAndLoad = async () => {
    await page.goto(base);
    await page.waitForFunction(() => /^GPU:|cannot run|no WebGPU/.test(document.getElementById('gpu').textContent), null, { timeout: 120e3 });
    const gpu = await page.textContent('#gpu');
    if (!gpu.startsWith('GPU:')) await fail(page, `no WebGPU: ${gpu}\n${log.join('\n')}`);
    // The list fills after the GPU line (models.json is fetched then): on a loaded machine a
    // moment later.
    await page.waitForFunction((want) => [...document.querySelectorAll('#served option')].some((o) => o.textContent.includes(want)), run.option, { timeout: 30e3 }).catch(() => {});
    const option = await page.$$eval('#served option', (os, want) => os.find((o) => o.textContent.includes(want))?.value, run.option);
    if (!option) await fail(page, `the page lists no ${run.option} model (is it in target/web/models.json?)`);
    await page.selectOption('#served', option);
    const t0 = Date.now();
    await page.click('#load-served');
    await page.waitForFunction(() => /^Loaded|Error|does not fit/.test(document.getElementById('model-status').textContent), null, { timeout: run.loadTimeout });
    const status = await page.textContent('#model-status');
    if (!status.startsWith('Loaded')) await fail(page, `loading: ${status}\n${log.join('\n')}`);
    return { gpu, status, loadSeconds: (Date.now() - t0) / 1000 };
  };

  const first = await openAndLoad();
  console.log(first.gpu);
  console.log(`${first.status} (${first.loadSeconds.toFixed(1)} s)`);
  if (which === 'llama-tiny') {
    // The weights are in the browser's storage now: a reload must load them without a download.
    const before = downloads('/models/llama-tiny/model.safetensors');
    const again = await openAndLoad();
    const after = downloads('/models/llama-tiny/model.safetensors');
    if (before !== 1 || after !== 1) await fail(page, `model.safetensors was downloaded ${before} time(s) before the reload and ${after} after: the stored copy was not used`);
    console.log(`reload: loaded again from the browser's storage in ${again.loadSeconds.toFixed(1)} s without a download`);
  }

  await page.fill('#story', run.prompt);
  if (!(await page.isVisible('#max_tokens'))) await page.click('#sampling summary');
  await page.fill('#max_tokens', String(run.maxTokens));
  await page.fill('#temperature', '0');
  await page.fill('#repeat_penalty', '1');
  await page.check('#ignore_eos');
  const profiled = which === 'llama-tiny' && await page.isEnabled('#profile');
  if (profiled) await page.check('#profile');
  // Note every piece of text as it arrives (a token span appended to the story), with the time.
  await page.evaluate(() => {
    window.pieces = [];
    new MutationObserver((ms) => {
      for (const m of ms) for (const n of m.addedNodes) window.pieces.push({ t: performance.now(), text: n.textContent });
    }).observe(document.getElementById('story'), { childList: true });
  });
  await page.waitForTimeout(800); // the typing settles into the studio's history
  await page.click('#continue');
  await page.waitForFunction(() => document.getElementById('story').dataset.done === 'true' || /Error/.test(document.getElementById('summary').textContent),
    null, { timeout: run.writeTimeout });
  const summary = await page.textContent('#summary');
  if (/Error/.test(summary)) await fail(page, `writing: ${summary}\n${log.join('\n')}`);
  const pieces = await page.evaluate(() => window.pieces);
  const text = pieces.map((p) => p.text).join('');
  const times = new Set(pieces.map((p) => Math.round(p.t)));
  if (text.trim().length === 0) await fail(page, 'no text was written');
  if (pieces.length < 2 || times.size < 2) await fail(page, `the text did not stream: ${pieces.length} piece(s) at ${times.size} distinct time(s)`);
  if (profiled && !(await page.isVisible('#profile-table'))) await fail(page, 'profiling was asked for but no per-pass table was shown');
  if (run.expect && !run.expect.startsWith(text)) await fail(page, `greedy text ${JSON.stringify(text)} is not the start of transformers' ${JSON.stringify(run.expect)}`);

  fs.mkdirSync(shots, { recursive: true });
  const shot = path.join(shots, `${which}.png`);
  await page.screenshot({ path: shot, fullPage: true });
  const speed = /writing ([\d.]+) tokens\/s/.exec(summary)?.[1];
  console.log(`streamed ${pieces.length} pieces: ${JSON.stringify(text)}`);
  console.log(summary);
  if (profiled) console.log((await page.textContent('#profile-table')).split('\n').slice(0, 6).join('\n'));
  if (which === 'llama-tiny') {
    // Cancel stops a long run after the token in flight.
    await page.fill('#max_tokens', '2000');
    await page.uncheck('#profile').catch(() => {});
    const before = await page.$$eval('#story span.tok', (s) => s.length);
    await page.click('#continue');
    await page.waitForFunction((n) => document.querySelectorAll('#story span.tok').length > n + 3, before, { timeout: 60e3 });
    await page.click('#stop');
    await page.waitForFunction(() => document.getElementById('story').dataset.done === 'true' || /Error/.test(document.getElementById('summary').textContent), null, { timeout: 60e3 });
    const cancelled = await page.textContent('#summary');
    if (!/stopped: cancelled/.test(cancelled)) await fail(page, `after Cancel: ${cancelled}`);
    console.log(`cancel: ${cancelled.split(';')[0]}`);

    // The same model through the folder picker; afterwards the picker lists it as cached.
    const dir = path.join(root, 'tests/fixtures/llama-tiny');
    await page.setInputFiles('#hf-dir', dir);
    await page.waitForFunction(() => /^Loaded|Error|does not fit/.test(document.getElementById('model-status').textContent), null, { timeout: run.loadTimeout });
    const picked = await page.textContent('#model-status');
    if (!picked.startsWith('Loaded')) await fail(page, `loading through the folder picker: ${picked}`);
    await page.reload();
    await page.waitForFunction(() => [...document.querySelectorAll('#served option')].some((o) => o.textContent.includes('cached in this browser')), null, { timeout: 120e3 })
      .catch(() => {});
    const listed = await page.$$eval('#served option', (os) => os.map((o) => o.textContent));
    if (!listed.some((o) => o.includes('cached in this browser'))) await fail(page, `after a reload the picker lists ${JSON.stringify(listed)}, no cached local model`);
    await page.selectOption('#served', { label: listed.find((o) => o.includes('cached in this browser')) });
    await page.click('#load-served');
    await page.waitForFunction(() => /^Loaded|Error|does not fit/.test(document.getElementById('model-status').textContent), null, { timeout: run.loadTimeout });
    const fromCache = await page.textContent('#model-status');
    if (!fromCache.startsWith('Loaded')) await fail(page, `loading the cached local model: ${fromCache}`);
    console.log(`folder picker, then after a reload from the cache: ${fromCache.split(':')[0]}`);

    // A model too big for the GPU's bindings is refused in words (here a GPU that pretends
    // to bind 100 kB; llama-tiny's embedding takes 256 kB).
    await page.goto(base + '?max_binding=200'); // less than one 64-float row of llama-tiny
    await page.waitForFunction(() => [...document.querySelectorAll('#served option')].some((o) => o.textContent.includes('llama-tiny')), null, { timeout: 120e3 });
    await page.selectOption('#served', { label: (await page.$$eval('#served option', (os) => os.map((o) => o.textContent))).find((o) => o.includes('llama-tiny')) });
    await page.click('#load-served');
    await page.waitForFunction(() => /^Loaded|Error|does not fit/.test(document.getElementById('model-status').textContent), null, { timeout: run.loadTimeout });
    const refused = await page.textContent('#model-status');
    if (!/does not fit this GPU's limits/.test(refused) || !(await page.$('#model-status.error'))) await fail(page, `with a 200-byte binding limit: ${refused}`);
    console.log(`too big: ${refused}`);

    // A browser without WebGPU gets told so in words.
    const bare = await browser.newPage();
    await bare.addInitScript(() => { delete Navigator.prototype.gpu; });
    await bare.goto(base);
    const said = await bare.textContent('#gpu');
    if (!/no WebGPU/.test(said) || !(await bare.$('#gpu.error'))) await fail(bare, `without WebGPU the page says: ${said}`);
    console.log(`without WebGPU: ${said}`);
  }
  console.log(`RESULT ${which}: decode ${speed} tokens/s in headless Chromium; screenshot ${path.relative(root, shot)}`);
  await browser.close();
  server.close();
} catch (e) {
  await fail(null, e.stack || String(e));
}
