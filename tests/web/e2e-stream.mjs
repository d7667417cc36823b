// The page's streamed loaders and a lost device, in headless Chromium (target/web, built by
// scripts/web.sh --build):
//   1. llama-tiny as a Hugging Face folder picked as files: its safetensors are read a tensor at
//      a time (each shard's header from its first bytes), so WebAssembly memory stays near the
//      largest tensor; the greedy tokens must be those of the same model picked as a GGUF;
//   2. the device destroyed (the page's ?test_hooks) in the middle of a generation: the page
//      says the GPU device was lost, then loads again without a reload and writes a token.
// Prints the peak WebAssembly memory (memory.buffer.byteLength) after each load.
//
//   node tests/web/e2e-stream.mjs
import { launch } from './chromium.mjs';
import http from 'node:http';
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

const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.json': 'application/json' };
const server = http.createServer((req, res) => {
  const url = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  const file = path.join(site, url.endsWith('/') ? url + 'index.html' : url);
  if (!file.startsWith(site) || !fs.existsSync(file) || !fs.statSync(file).isFile()) return res.writeHead(404).end('not found');
  res.writeHead(200, { 'content-type': types[path.extname(file)] || 'application/octet-stream', 'content-length': fs.statSync(file).size });
  fs.createReadStream(file).pipe(res);
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const base = `http://127.0.0.1:${server.address().port}/`;

const browser = await launch({ width: 1100, height: 1300 });
const log = [];
const fail = (why) => {
  console.error(`FAIL (e2e-stream): ${why}\n${log.slice(-20).join('\n')}`);
  process.exit(1);
};

const page = browser.pages()[0] || await browser.newPage();
page.on('console', (m) => log.push(`console.${m.type()}: ${m.text()}`));
page.on('pageerror', (e) => log.push(`page error: ${e.message}`));

// Picks `files` in `input` and waits for the load; returns the status and the WebAssembly
// memory the loader panel shows (the worker's memory.buffer.byteLength, which only grows).
async function pick(input, files, what) {
  const t0 = Date.now();
  await page.evaluate(() => { document.getElementById('model-status').textContent = ''; });
  await page.setInputFiles(input, files);
  await page.waitForFunction(() => /^Loaded|Error|does not fit/.test(document.getElementById('model-status').textContent), null, { timeout: 180e3 });
  const status = await page.textContent('#model-status');
  if (!status.startsWith('Loaded')) fail(`loading ${what}: ${status}`);
  const wasm = Number(await page.getAttribute('#wasm-memory', 'data-bytes'));
  console.log(`${what}: loaded in ${((Date.now() - t0) / 1000).toFixed(1)} s, peak WebAssembly memory ${wasm} bytes (${(wasm / 1e6).toFixed(1)} MB)`);
  return { status, wasm };
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

async function greedy() {
  await write(greedyTokens);
  await finished();
  const summary = await page.textContent('#summary');
  if (/Error/.test(summary)) fail(`writing: ${summary}`);
  return (await page.evaluate(() => window.pieces)).join('');
}

try {
  await page.goto(base + '?test_hooks=1');
  await page.waitForFunction(() => /^GPU:|cannot run|no WebGPU/.test(document.getElementById('gpu').textContent), null, { timeout: 120e3 });
  const gpu = await page.textContent('#gpu');
  if (!gpu.startsWith('GPU:')) fail(`no WebGPU: ${gpu}`);
  console.log(gpu);

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
  await write(1);
  await finished();
  const after = await page.textContent('#summary');
  const pieces = await page.evaluate(() => window.pieces);
  if (/Error/.test(after) || !pieces.join('').length) fail(`writing after the reload of the model: ${after}`);
  console.log(`after the loss, loaded again without a page reload and wrote ${JSON.stringify(pieces.join(''))}: ${after}`);
  console.log('RESULT e2e-stream: ok');
  await browser.close();
  server.close();
} catch (e) {
  fail(e.stack || String(e));
}
