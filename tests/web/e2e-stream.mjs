// The page's streamed loaders and a lost device, in headless Chromium (target/web, built by
// scripts/web.sh --build):
//   1. llama-tiny as a Hugging Face folder picked as files: its safetensors are read a tensor at
//      a time (each shard's header from its first bytes), so WebAssembly memory stays near the
//      largest tensor; the greedy tokens must be those of the same model picked as a GGUF;
//   2. the device destroyed (the page's ?test_hooks) in the middle of a generation: the page
//      says the GPU device was lost, then loads again without a reload and writes a token;
//   3. the device destroyed in the middle of a streamed load (after a few tensors): the page says
//      so instead of "Loaded" (no half model on a dead device), then loads again and writes;
//   4. a folder that does not fit is refused before any upload, with the numbers and the context
//      that would fit: under a GPU budget (?gpu_memory=) and under a binding limit
//      (?max_binding=); the context it proposes then loads;
//   5. the folder from a URL beside the page: refused from the shard's header (range reads)
//      with nothing downloaded; then downloaded once into the browser's storage, and after a
//      reload loaded from there with no second download.
// Prints the peak WebAssembly memory (memory.buffer.byteLength) after each load.
//
//   node tests/web/e2e-stream.mjs
import { launch, serveStatic } from './chromium.mjs';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const root = path.resolve(new URL('../..', import.meta.url).pathname);
const site = path.join(root, 'target/web');
const fixture = path.join(root, 'tests/fixtures/llama-tiny');
const prompt = 'Once upon a time, in a lighthouse at the edge of the world,';
const greedyTokens = 12;

// The folder as a user would pick it: the model's files and nothing else.
const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'quill-stream-')), 'llama-tiny');
fs.mkdirSync(dir);
for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'model.safetensors']) fs.copyFileSync(path.join(fixture, f), path.join(dir, f));

const { base, server, gets } = await serveStatic(site);

const browser = await launch({ width: 1100, height: 1300 });
const log = [];
const fail = (why) => {
  console.error(`FAIL (e2e-stream): ${why}\n${log.slice(-20).join('\n')}`);
  process.exit(1);
};

const page = browser.pages()[0] || await browser.newPage();
page.on('console', (m) => log.push(`console.${m.type()}: ${m.text()}`));
page.on('pageerror', (e) => log.push(`page error: ${e.message}`));

// Picks `files` in `input` and waits for the load to end, loaded or not; returns the final
// status and every status shown on the way (window.statuses).
async function attempt(input, files) {
  return settle(async () => {
    // Picking the same folder twice in a row never fires a change: the input forgets it first.
    await page.$eval(input, (el) => { el.value = ''; });
    await page.setInputFiles(input, files);
  });
}

// `attempt` for a model at a URL beside the page, typed into the URL field.
async function attemptUrl(url) {
  return settle(async () => {
    await page.fill('#url', url);
    await page.click('#load-url');
  });
}

// Starts a load with `start` and waits until it ends, loaded or not (see `attempt`).
async function settle(start) {
  await page.evaluate(() => {
    const el = document.getElementById('model-status');
    el.textContent = '';
    window.statuses = [];
    window.statusObserver?.disconnect();
    window.statusObserver = new MutationObserver(() => window.statuses.push(el.textContent));
    window.statusObserver.observe(el, { childList: true, characterData: true, subtree: true });
  });
  await start();
  await page.waitForFunction(() => /^Loaded|Error|does not fit/.test(document.getElementById('model-status').textContent), null, { timeout: 180e3 });
  return { status: await page.textContent('#model-status'), statuses: await page.evaluate(() => window.statuses) };
}

// `attempt` that must load; returns the status and the WebAssembly memory the loader panel
// shows (the worker's memory.buffer.byteLength, which only grows).
async function pick(input, files, what) {
  const t0 = Date.now();
  const { status } = await attempt(input, files);
  if (!status.startsWith('Loaded')) fail(`loading ${what}: ${status}`);
  const wasm = Number(await page.getAttribute('#wasm-memory', 'data-bytes'));
  console.log(`${what}: loaded in ${((Date.now() - t0) / 1000).toFixed(1)} s, peak WebAssembly memory ${wasm} bytes (${(wasm / 1e6).toFixed(1)} MB)`);
  return { status, wasm };
}

async function open(query) {
  await page.goto(base + query);
  await page.waitForFunction(() => /^GPU:|cannot run|no WebGPU/.test(document.getElementById('gpu').textContent), null, { timeout: 120e3 });
  const gpu = await page.textContent('#gpu');
  if (!gpu.startsWith('GPU:')) fail(`no WebGPU: ${gpu}`);
  return gpu;
}

// Starts a greedy continuation of the prompt; resolves once it is done or failed.
async function write(maxTokens) {
  await page.fill('#story', prompt);
  if (!(await page.isVisible('#max_tokens'))) await page.click('#sampling summary');
  await page.fill('#max_tokens', String(maxTokens));
  await page.fill('#temperature', '0');
  await page.fill('#repeat_penalty', '1');
  await page.check('#ignore_eos');
  await page.evaluate(() => {
    window.pieces = [];
    window.piecesObserver?.disconnect(); // one observer per run, or each piece counts twice
    window.piecesObserver = new MutationObserver((ms) => { for (const m of ms) for (const n of m.addedNodes) window.pieces.push(n.textContent); });
    window.piecesObserver.observe(document.getElementById('story'), { childList: true });
  });
  await page.waitForTimeout(800); // the typing settles into the studio's history
  await page.click('#continue');
}

const finished = () => page.waitForFunction(() => document.getElementById('story').dataset.done === 'true' || /Error/.test(document.getElementById('summary').textContent), null, { timeout: 300e3 });

// Writes one token; fails unless some text came.
async function writeOne(what) {
  await write(1);
  await finished();
  const summary = await page.textContent('#summary');
  const pieces = await page.evaluate(() => window.pieces);
  if (/Error/.test(summary) || !pieces.join('').length) fail(`writing ${what}: ${summary}`);
  return `${JSON.stringify(pieces.join(''))}: ${summary}`;
}

// The folder refused with a context of `ctx` (the model's when undefined) under the page's
// `query`: the refusal names the context, the bytes needed and the context that fits, and
// comes before any upload. Returns that context.
async function refused(query, ctx, why, how = () => attempt('#hf-dir', dir)) {
  await open(query);
  if (ctx) await page.fill('#ctx', String(ctx));
  const { status, statuses } = await how();
  const asked = ctx || 256; // llama-tiny's context
  if (!/does not fit this GPU's limits/.test(status) || !(await page.$('#model-status.error'))) fail(`${query}: the folder was not refused: ${status}`);
  for (const want of [`does not fit this GPU with a context of ${asked}`, `${asked} positions need`, why, 'bytes']) {
    if (!status.includes(want)) fail(`${query}: the refusal does not say "${want}": ${status}`);
  }
  const fits = /a context of (\d+) positions fits/.exec(status);
  if (!fits || !(Number(fits[1]) < asked)) fail(`${query}: the refusal names no smaller context that fits: ${status}`);
  const uploaded = statuses.filter((t) => /uploading to the GPU/.test(t));
  if (uploaded.length) fail(`${query}: refused only after an upload began (${uploaded[0]})`);
  console.log(`refused under ${query}: ${status}`);
  return Number(fits[1]);
}

async function greedy() {
  await write(greedyTokens);
  await finished();
  const summary = await page.textContent('#summary');
  if (/Error/.test(summary)) fail(`writing: ${summary}`);
  return (await page.evaluate(() => window.pieces)).join('');
}

try {
  console.log(await open('?test_hooks=1'));

  // 1. The folder first, so the peak memory is its own; then the GGUF of the same model.
  const folder = await pick('#hf-dir', dir, 'llama-tiny folder (safetensors, streamed)');
  const fromFolder = await greedy();
  await pick('#gguf-file', path.join(fixture, 'model-f32.gguf'), 'llama-tiny GGUF (streamed)');
  const fromGguf = await greedy();
  console.log(`greedy from the folder: ${JSON.stringify(fromFolder)}\ngreedy from the GGUF:   ${JSON.stringify(fromGguf)}`);
  if (!fromFolder.trim()) fail('the folder wrote no text');
  if (fromFolder !== fromGguf) fail('the folder and the GGUF wrote different greedy text');
  const shard = fs.statSync(path.join(dir, 'model.safetensors')).size;
  console.log(`model.safetensors is ${shard} bytes; WebAssembly memory after the folder's load: ${folder.wasm} bytes`);

  // 2. The device lost in the middle of a generation.
  await write(2000);
  await page.waitForFunction(() => window.pieces.length > 3, null, { timeout: 120e3 });
  await page.evaluate(() => window.quillTestHooks.loseDevice());
  await finished();
  const lost = await page.textContent('#summary');
  if (!/GPU device was lost/.test(lost) || !/load the model again/.test(lost)) fail(`after the device was destroyed mid-generation the page says: ${lost}`);
  console.log(`device lost mid-generation: ${lost}`);
  await pick('#hf-dir', dir, 'llama-tiny folder again, on a new device');
  console.log(`after the loss, loaded again without a page reload and wrote ${await writeOne('after the reload of the model')}`);

  // 3. The device lost in the middle of a streamed load, once 3 of the folder's tensors are up.
  await page.evaluate(() => window.quillTestHooks.loseDeviceDuringLoad(3));
  const midLoad = await attempt('#hf-dir', dir);
  if (midLoad.status.startsWith('Loaded') || !/GPU device was lost/.test(midLoad.status) || !/load the model again/.test(midLoad.status)) {
    fail(`after the device was destroyed mid-load the page says: ${midLoad.status}`);
  }
  if (!midLoad.statuses.some((t) => /uploading to the GPU/.test(t))) fail(`the device was to be lost during the upload, but no upload was shown: ${midLoad.statuses.join(' | ')}`);
  console.log(`device lost mid-load: ${midLoad.status}`);
  await pick('#hf-dir', dir, 'llama-tiny folder after a loss mid-load, on a new device');
  console.log(`after the loss mid-load, loaded again without a page reload and wrote ${await writeOne('after a loss mid-load')}`);

  // 4. Refused before any upload. A 1 MiB budget holds llama-tiny's 0.8 MB of weights, not a
  //    context of 256 beside them; a 128 KiB binding holds the logits of 32 positions, not 128.
  const fitsBudget = await refused('?test_hooks=1&gpu_memory=1048576', 256, 'GPU memory budget');
  await page.fill('#ctx', String(fitsBudget));
  await pick('#hf-dir', dir, `llama-tiny folder with the context the refusal proposed (${fitsBudget})`);
  // The proposed context (22 positions) is shorter than writeOne's prompt (26 tokens): that it
  // loads is the check here (steps 1 to 3 check writing).
  await refused('?test_hooks=1&max_binding=131072', undefined, "the adapter's limit of 131072 bytes per buffer");

  // 5. The same folder from a URL beside the page (no file list: the page finds
  //    model.safetensors itself). Refused from the shard's header, read by ranges, before any
  //    download; then, with the proposed context, downloaded into the browser's storage once:
  //    after a reload it loads from there with no second download.
  const url = 'models/llama-tiny/';
  const shardPath = `/${url}model.safetensors`;
  const fullGets = () => gets.get(shardPath)?.full || 0;
  const fitsUrl = await refused('?test_hooks=1&gpu_memory=1048576', 256, 'GPU memory budget', () => attemptUrl(url));
  if (fullGets() !== 0 || !(gets.get(shardPath)?.ranged > 0)) fail(`the refused folder was downloaded: ${JSON.stringify(gets.get(shardPath))} GETs of ${shardPath}`);
  console.log(`refused from the URL after ${gets.get(shardPath).ranged} range reads and no download of model.safetensors`);
  const fromUrl = async (what) => {
    await page.fill('#ctx', String(fitsUrl));
    const t0 = Date.now();
    const { status } = await attemptUrl(url);
    if (!status.startsWith('Loaded')) fail(`loading ${what}: ${status}`);
    const note = await page.textContent('#cache-note');
    console.log(`${what}: loaded in ${((Date.now() - t0) / 1000).toFixed(1)} s; ${note}`);
    return note;
  };
  const first = await fromUrl('llama-tiny folder from its URL');
  if (fullGets() !== 1 || !/model.safetensors: cached in this browser/.test(first)) fail(`the URL's shard was not downloaded once into storage (${fullGets()} GETs): ${first}`);
  await open('?test_hooks=1');
  const again = await fromUrl('llama-tiny folder from its URL after a reload');
  if (fullGets() !== 1 || !/read from this browser's storage/.test(again)) fail(`after a reload the shard was fetched again (${fullGets()} GETs): ${again}`);
  console.log('RESULT e2e-stream: ok');
  await browser.close();
  server.close();
} catch (e) {
  fail(e.stack || String(e));
}
