// quill's page with models at real sizes, in headless Chromium on WebGPU (SwiftShader without a
// GPU): a GGUF streamed to the GPU a tensor at a time, the browser's storage, limits.
//
//   node tests/web/e2e-big.mjs MODEL.gguf [steps]
//
// MODEL is served beside the page (target/web/models/, with range requests). Steps, in order
// (default: all of them):
//   refuse   a context that does not fit (?gpu_memory=1.2x the file, ctx 8192) is refused with the numbers
//   file     the file picker (?max_binding=134217728: WebGPU's default binding limit), stored
//            in OPFS; write one token
//   stored   after a reload, the stored copy loads with no file picked; then removed from the list
//   nocache  the URL with storage refused (?storage_quota=0): says "not cached", reads the URL by
//            ranges; write one token
//   url      the URL with storage allowed: downloaded into OPFS; after a reload, loaded again
//            with no second download
// Each load prints its time and the peak WebAssembly memory (memory.buffer.byteLength), which
// must stay under 300 MB; scripts/test-web-big.sh makes the synthetic 1B model and runs this.
import { chromium } from 'playwright-core';
import { serveStatic } from './chromium.mjs';
import fs from 'node:fs';
import path from 'node:path';

const root = path.resolve(new URL('../..', import.meta.url).pathname);
const site = path.join(root, 'target/web');
const shots = path.join(root, 'target/web-screenshots');
const modelPath = path.resolve(process.argv[2] || '');
if (!process.argv[2] || !fs.existsSync(modelPath)) throw new Error(`usage: node tests/web/e2e-big.mjs MODEL.gguf [steps]: ${modelPath} is missing`);
const steps = (process.argv[3] || 'refuse,file,stored,nocache,url').split(',');
const modelName = path.basename(modelPath);
const modelUrl = `models/${modelName}`;
const WASM_LIMIT = 300e6;
const LOAD_TIMEOUT = 30 * 60e3;

// target/web and the model, answering HEAD and Range, counting GETs.
const { base, server, gets } = await serveStatic(site, { [`/${modelUrl}`]: modelPath });
const getsOf = (url) => { const n = gets.get(url); return n ? n.full + n.ranged : 0; };

const userDir = fs.mkdtempSync('/tmp/quill-chromium-');
const browser = await chromium.launchPersistentContext(userDir, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless=new', '--no-sandbox', '--disable-gpu-sandbox', '--enable-unsafe-webgpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  viewport: { width: 1100, height: 1400 },
});
const page = browser.pages()[0] || await browser.newPage();
const log = [];
page.on('console', (m) => log.push(`console.${m.type()}: ${m.text()}`));
page.on('pageerror', (e) => log.push(`page error: ${e.message}`));
const done = () => { browser.close(); server.close(); fs.rmSync(userDir, { recursive: true, force: true }); };
const fail = async (step, why) => {
  fs.mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, `big-${step}-failed.png`), fullPage: true }).catch(() => {});
  console.error(`FAIL (${step}): ${why}\n${log.slice(-20).join('\n')}`);
  await done();
  process.exit(1);
};

async function open(query = '') {
  await page.goto(base + query);
  await page.waitForFunction(() => /^GPU:|cannot run|no WebGPU/.test(document.getElementById('gpu').textContent), null, { timeout: 120e3 });
  const gpu = await page.textContent('#gpu');
  if (!gpu.startsWith('GPU:')) await fail('open', gpu);
  return gpu;
}

// Waits for the load to end; returns its status, seconds and the WebAssembly memory.
async function loaded(step, t0, expectOk = true) {
  await page.waitForFunction(() => /^Loaded|Error|does not fit/.test(document.getElementById('model-status').textContent), null, { timeout: LOAD_TIMEOUT });
  const status = await page.textContent('#model-status');
  if (expectOk && !status.startsWith('Loaded')) await fail(step, `loading: ${status}`);
  const wasm = await page.textContent('#wasm-memory');
  const note = await page.textContent('#cache-note');
  const mb = Number(/([\d.]+) MB/.exec(wasm)?.[1]) * 1e6;
  if (expectOk && !(mb > 0 && mb < WASM_LIMIT)) await fail(step, `WebAssembly memory ${wasm}: must stay under ${WASM_LIMIT / 1e6} MB`);
  const seconds = (Date.now() - t0) / 1000;
  console.log(`${step}: ${status.slice(0, 160)}\n  ${seconds.toFixed(1)} s; ${wasm}; storage: ${note}`);
  return { status, seconds, wasm, note };
}

async function writeOne(step) {
  // The studio: the story is the prompt; Continue writes one token.
  await page.fill('#story', 'Once upon a time');
  if (!(await page.isVisible('#max_tokens'))) await page.click('#sampling summary');
  await page.fill('#max_tokens', '1');
  await page.fill('#temperature', '0');
  await page.check('#ignore_eos');
  await page.waitForTimeout(800); // the typing settles into the studio's history
  const t0 = Date.now();
  await page.click('#continue');
  await page.waitForFunction(() => document.getElementById('story').dataset.done === 'true' || /Error/.test(document.getElementById('summary').textContent), null, { timeout: LOAD_TIMEOUT });
  const summary = await page.textContent('#summary');
  const written = await page.$$eval('#story span.tok', (s) => s.length);
  if (/Error/.test(summary) || written !== 1) await fail(step, `writing: ${written} token(s); ${summary}`);
  console.log(`  wrote 1 token in ${((Date.now() - t0) / 1000).toFixed(1)} s; ${await page.textContent('#wasm-memory')}`);
  fs.mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, `big-${step}.png`), fullPage: true });
}

const storedKeys = () => page.$$eval('#cached-models tr', (rs) => rs.map((r) => r.dataset.key));

try {
  console.log(await open());
  if (steps.includes('refuse')) {
    // A GPU budget of 1.2x the weights: a context of 8192 cannot fit beside them.
    await open(`?gpu_memory=${Math.round(fs.statSync(modelPath).size * 1.2)}`);
    await page.fill('#ctx', '8192');
    await page.fill('#url', modelUrl);
    const t0 = Date.now();
    await page.click('#load-url');
    const r = await loaded('refuse', t0, false);
    if (!/does not fit this GPU with a context of 8192/.test(r.status) || !/\d+ bytes/.test(r.status) || !/positions fits/.test(r.status)) await fail('refuse', r.status);
  }
  if (steps.includes('file')) {
    await open('?max_binding=134217728');
    const t0 = Date.now();
    await page.setInputFiles('#gguf-file', modelPath);
    const r = await loaded('file', t0);
    if (!/cached in this browser/.test(r.note)) await fail('file', `the picked file was not stored: ${r.note}`);
    await writeOne('file');
  }
  if (steps.includes('stored')) {
    await open();
    await page.waitForFunction((k) => [...document.querySelectorAll('#cached-models tr')].some((r) => r.dataset.key === k), modelName, { timeout: 60e3 })
      .catch(() => {});
    if (!(await storedKeys()).includes(modelName)) await fail('stored', `after a reload the stored list is ${JSON.stringify(await storedKeys())}`);
    const t0 = Date.now();
    await page.click(`#cached-models tr[data-key="${modelName}"] .load-stored`);
    await loaded('stored', t0);
    await page.click(`#cached-models tr[data-key="${modelName}"] .remove-stored`);
    await page.waitForFunction((k) => ![...document.querySelectorAll('#cached-models tr')].some((r) => r.dataset.key === k), modelName, { timeout: 60e3 });
    console.log('  removed from the browser\'s storage');
  }
  if (steps.includes('nocache')) {
    await open('?storage_quota=0');
    await page.fill('#url', modelUrl);
    const t0 = Date.now();
    await page.click('#load-url');
    const r = await loaded('nocache', t0);
    if (!/not cached: the browser allows 0 MB here/.test(r.note)) await fail('nocache', `with storage refused: ${r.note}`);
    await writeOne('nocache');
  }
  if (steps.includes('url')) {
    await open();
    await page.fill('#url', modelUrl);
    let t0 = Date.now();
    await page.click('#load-url');
    const r = await loaded('url', t0);
    if (!/cached in this browser/.test(r.note)) await fail('url', `the download was not stored: ${r.note}`);
    const downloads = getsOf(`/${modelUrl}`);
    await open();
    await page.fill('#url', modelUrl);
    t0 = Date.now();
    await page.click('#load-url');
    const again = await loaded('url-reload', t0);
    if (getsOf(`/${modelUrl}`) !== downloads || !/read from this browser's storage/.test(again.note)) {
      await fail('url-reload', `${getsOf(`/${modelUrl}`) - downloads} more GET(s) of the model after a reload; storage: ${again.note}`);
    }
  }
  console.log(`RESULT big (${modelName}, ${(fs.statSync(modelPath).size / 1e6).toFixed(0)} MB): ${steps.join(', ')} passed`);
  await done();
} catch (e) {
  await fail('error', e.stack || String(e));
}
