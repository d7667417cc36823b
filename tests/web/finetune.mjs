// The page's fine-tune panel end to end in headless Chromium (WebGPU on SwiftShader without a
// GPU), on target/web from scripts/web.sh --build with llama-tiny:
//
//   node tests/web/finetune.mjs
//
// Too short a text is refused in words; pasted text trains a LoRA adapter for 10 steps whose
// losses, as the plot shows them, are finite and fall; the adapter is listed with its steps
// and final loss; writing with it (the model loaded again with the adapter merged) changes
// the greedy text; Stop ends a long run early and keeps it; after a reload the adapter is still listed, and Delete removes it. A GGUF
// model gets the reason it cannot be trained on instead of a Train button. A screenshot goes
// to target/web-screenshots/finetune.png.
import { launch, pageWithLog, serveStatic } from './chromium.mjs';
import fs from 'node:fs';
import path from 'node:path';

const root = path.resolve(new URL('../..', import.meta.url).pathname);
const shots = path.join(root, 'target/web-screenshots');
const timeout = 120e3;
const STEPS = 10;
const NAME = 'test voice';
// Text with structure to learn (repeated phrases), long enough for several 32-token sequences.
const TEXT = Array.from({ length: 6 }, (_, i) => `The keeper climbed the stairs of the lighthouse for the ${i + 1}th time that night, and the lamp turned, and the sea was quiet.`).join(' ');

const { base, server } = await serveStatic(path.join(root, 'target/web'));
const browser = await launch({ width: 1200, height: 1600 });
const { page, log } = await pageWithLog(browser);

async function finish(code) {
  await browser.close().catch(() => {});
  server.close();
  process.exit(code);
}
async function fail(why) {
  fs.mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, 'finetune-failed.png'), fullPage: true }).catch(() => {});
  console.error(`FAIL (finetune): ${why}\n${log.slice(-20).join('\n')}`);
  await finish(1);
}
const check = async (ok, why) => { if (!ok) await fail(typeof why === 'function' ? await why() : why); };
const text = (sel) => page.textContent(sel);

async function open() {
  await page.goto(base);
  await page.waitForFunction(() => /^GPU:|cannot run|no WebGPU/.test(document.getElementById('gpu').textContent), null, { timeout });
  await check((await text('#gpu')).startsWith('GPU:'), async () => `no WebGPU: ${await text('#gpu')}`);
  await page.waitForFunction(() => [...document.querySelectorAll('#served option')].some((o) => o.textContent.includes('llama-tiny')), null, { timeout: 30e3 }).catch(() => {});
}
async function loaded(what) {
  await page.waitForFunction(() => /^Loaded|Error|does not fit/.test(document.getElementById('model-status').textContent), null, { timeout });
  const status = await text('#model-status');
  await check(status.startsWith('Loaded'), `loading ${what}: ${status}`);
  return status;
}
async function loadTiny() {
  const option = await page.$$eval('#served option', (os) => os.find((o) => o.textContent.includes('llama-tiny'))?.value);
  await check(option, 'the page lists no llama-tiny model');
  await page.selectOption('#served', option);
  await page.click('#load-served');
  return loaded('llama-tiny');
}
// Greedy text of 8 tokens after the story's prompt; null (said aloud) where this Chromium's
// WGSL compiler rejects the sampler's shader, so the page cannot write at all (the other page
// tests fail on that; this one still checks the training, the storage and the merge).
async function greedy() {
  if (!(await page.isVisible('#max_tokens'))) await page.click('#sampling summary');
  await page.fill('#max_tokens', '8');
  await page.fill('#temperature', '0');
  await page.check('#ignore_eos');
  await page.fill('#story', 'The keeper climbed the stairs');
  await page.waitForSelector('#continue:not([disabled])', { timeout });
  await page.click('#continue');
  await page.waitForFunction(() => document.getElementById('story').dataset.done === 'true', null, { timeout });
  const summary = await text('#summary');
  if (/Error while parsing WGSL/.test(summary)) {
    console.log(`SKIPPING the greedy comparison: the page cannot write here: ${summary.split('\n')[0]}`);
    return null;
  }
  await check(!/Error/.test(summary), `writing: ${summary}`);
  return page.$$eval('#story span.tok', (s) => s.map((x) => x.textContent).join(''));
}
const listed = () => page.$$eval('#ft-adapters tr.ft-adapter', (rows) => rows.map((r) => ({ name: r.dataset.name, text: r.textContent })));
async function trainDone() {
  await page.waitForFunction(() => ['done', 'error'].includes(document.getElementById('finetune-section').dataset.state), null, { timeout });
  return text('#ft-status');
}

try {
  await open();
  await loadTiny();
  await check(/Trains on llama-tiny/.test(await text('#ft-model')), async () => `the panel says: ${await text('#ft-model')}`);

  // Too short a text: refused in words, in the page.
  await page.fill('#ft-text', 'Too short.');
  await page.fill('#ft-seq', '32');
  await page.click('#ft-train');
  const short = await trainDone();
  await check(/Cannot fine-tune: the text is \d+ tokens; a sequence of 32 tokens needs at least 33/.test(short) && await page.$('#ft-status.error'), `a too-short text: ${short}`);
  console.log(`too short: ${short}`);

  const base0 = await greedy();
  await page.fill('#ft-text', TEXT);
  await page.fill('#ft-name', NAME);
  await page.fill('#ft-steps', String(STEPS));
  await page.fill('#ft-rank', '4');
  await page.fill('#ft-lr', '0.01');
  await page.fill('#ft-batch', '2');
  // Each step's loss as the page shows it while training.
  await page.evaluate(() => {
    window.stepsShown = [];
    new MutationObserver(() => {
      const m = /^Step (\d+) of/.exec(document.getElementById('ft-status').textContent);
      if (m) window.stepsShown.push({ step: Number(m[1]), points: document.querySelectorAll('#ft-plot circle.ft-point').length });
    }).observe(document.getElementById('ft-status'), { childList: true, characterData: true, subtree: true });
  });
  const t0 = Date.now();
  await page.click('#ft-train');
  const said = await trainDone();
  const seconds = (Date.now() - t0) / 1000;
  await check(/^Trained after 10 steps.*Kept in this browser/.test(said), `training: ${said}`);
  const losses = await page.$$eval('#ft-plot circle.ft-point', (cs) => cs.map((c) => Number(c.dataset.loss)));
  await check(losses.length === STEPS && losses.every(Number.isFinite), `the plot shows ${losses.length} losses (${losses}); expected ${STEPS} finite ones`);
  await check(losses[STEPS - 1] < losses[0], `the loss did not fall: ${losses}`);
  await check(await page.isVisible('#ft-plot'), 'the loss plot is not shown');
  const live = await page.evaluate(() => window.stepsShown);
  await check(live.length === STEPS && live.every((s, i) => s.step === i + 1 && s.points === i + 1), `while training the page showed ${JSON.stringify(live)}: expected every step, one more point each`);
  console.log(`trained ${STEPS} steps in ${seconds.toFixed(1)} s: loss ${losses.map((l) => l.toFixed(3)).join(' ')}`);
  let rows = await listed();
  const row = rows.find((r) => r.name === NAME);
  await check(row && row.text.includes(`${STEPS} steps`) && row.text.includes(`final loss ${losses[STEPS - 1].toFixed(3)}`), `the list after training: ${JSON.stringify(rows)}`);

  // Writing with the adapter: the model loads again with it merged, and greedy text changes.
  await page.click(`#ft-adapters tr[data-name="${NAME}"] button.ft-apply`);
  const merged = await loaded('llama-tiny with the adapter');
  await check(merged.includes(`adapter “${NAME}” is merged`), `after Write with it: ${merged}`);
  if (base0 !== null) {
    const tuned = await greedy();
    await check(tuned !== base0, `greedy text with the adapter equals the base model's: ${JSON.stringify(tuned)}`);
    console.log(`greedy: base ${JSON.stringify(base0)}, with the adapter ${JSON.stringify(tuned)}`);
  }
  fs.mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, 'finetune.png'), fullPage: true });

  // Stop: a long run ends after the step in flight, and what it learnt so far is kept.
  await page.fill('#ft-name', 'stopped');
  await page.fill('#ft-steps', '1000');
  await page.click('#ft-train');
  await page.waitForFunction(() => /^Step [2-9]/.test(document.getElementById('ft-status').textContent), null, { timeout });
  await page.click('#ft-stop');
  const stopped = await trainDone();
  const done = Number(/^Stopped after (\d+) steps/.exec(stopped)?.[1]);
  await check(done >= 2 && done < 1000 && /Kept in this browser/.test(stopped), `after Stop: ${stopped}`);
  await check((await listed()).some((r) => r.name === 'stopped' && r.text.includes(`${done} steps (stopped early)`)), async () => `after Stop the list is ${JSON.stringify(await listed())}`);
  console.log(`stop: ${stopped}`);

  // A reload: the adapter is still listed (IndexedDB), and Delete removes it.
  await open();
  await page.waitForSelector(`#ft-adapters tr[data-name="${NAME}"]`, { timeout: 30e3 }).catch(() => {});
  rows = await listed();
  await check(rows.some((r) => r.name === NAME && r.text.includes(`${STEPS} steps`)), `after a reload the list is ${JSON.stringify(rows)}`);
  await page.click(`#ft-adapters tr[data-name="${NAME}"] button.ft-remove`);
  await page.waitForFunction((n) => !document.querySelector(`#ft-adapters tr[data-name="${n}"]`), NAME, { timeout: 30e3 }).catch(() => {});
  await check(!(await listed()).some((r) => r.name === NAME), 'Delete left the adapter listed');
  console.log('after a reload the adapter was still listed; Delete removed it');

  // A GGUF model: the panel says why it cannot train instead of offering Train.
  await page.fill('#url', 'models/llama-tiny/model-f32.gguf');
  await page.click('#load-url');
  await loaded('the GGUF');
  const why = await text('#ft-model');
  await check(/GGUF file: the browser's trainer reads a Hugging Face safetensors folder/.test(why) && await page.isDisabled('#ft-train'), `with a GGUF model the panel says ${JSON.stringify(why)}`);
  console.log(`GGUF: ${why}`);
  console.log(`RESULT finetune: ${STEPS} LoRA steps in the page in ${seconds.toFixed(1)} s, loss ${losses[0].toFixed(3)} -> ${losses[STEPS - 1].toFixed(3)}`);
  await finish(0);
} catch (e) {
  await fail(e.stack || String(e));
}
