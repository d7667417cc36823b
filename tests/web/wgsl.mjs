// Every shader compiled by the browsers' WGSL compiler (Tint, in headless Chromium), as quill
// assembles it (src/gpu/context.rs's Shader::source: shaders/common.wgsl, then the body; each
// shaders/formats/*.wgsl before shaders/quant.wgsl and quant_plain.wgsl after it, as
// src/ops/matmul.rs's quant_shaders! does).
// naga, which the native tests compile with, accepts some WGSL that Tint refuses (its
// uniformity analysis is stricter): this finds that in seconds, before the minutes of the
// wasm kernel tests. Fails listing each error with its file and line.
import { launch } from './chromium.mjs';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const read = (f) => fs.readFileSync(path.join(root, 'shaders', f), 'utf8');
const common = read('common.wgsl');
const units = [];
for (const f of fs.readdirSync(path.join(root, 'shaders')).sort()) {
  // quant_subgroup.wgsl is native only (src/gpu/context.rs's Context::subgroups): naga refuses
  // the `enable subgroups;` Tint requires, so the web build never compiles it.
  if (!f.endsWith('.wgsl') || ['common.wgsl', 'quant.wgsl', 'quant_plain.wgsl', 'quant_subgroup.wgsl'].includes(f)) continue;
  units.push({ name: f, parts: [['common.wgsl', common], [f, read(f)]] });
}
for (const f of fs.readdirSync(path.join(root, 'shaders/formats')).sort()) {
  if (!f.endsWith('.wgsl')) continue;
  units.push({ name: `formats/${f} + quant.wgsl`, parts: [['common.wgsl', common], [`formats/${f}`, read(`formats/${f}`)], ['quant.wgsl', read('quant.wgsl')], ['quant_plain.wgsl', read('quant_plain.wgsl')]] });
}
if (units.length < 10) throw new Error(`tests/web/wgsl.mjs: only ${units.length} shaders found under shaders/`);

// WebGPU needs a secure context: a page on localhost.
const server = http.createServer((_, res) => { res.setHeader('content-type', 'text/html'); res.end('<!doctype html><title>wgsl</title>'); }).listen(0, '127.0.0.1');
await new Promise((r) => server.on('listening', r));
const browser = await launch({ width: 400, height: 300 });
let failed = 0;
try {
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  for (const u of units) {
    const code = u.parts.map((p) => p[1]).join('\n');
    const messages = await page.evaluate(async (code) => {
      if (!navigator.gpu) return [{ type: 'error', lineNum: 0, linePos: 0, message: 'navigator.gpu is missing (no WebGPU)' }];
      const adapter = await navigator.gpu.requestAdapter();
      if (!adapter) return [{ type: 'error', lineNum: 0, linePos: 0, message: 'no WebGPU adapter' }];
      const device = await adapter.requestDevice();
      const info = await device.createShaderModule({ code }).getCompilationInfo();
      device.destroy();
      return info.messages.map((m) => ({ type: m.type, lineNum: m.lineNum, linePos: m.linePos, message: m.message }));
    }, code);
    // Map the assembled line back to its file.
    const where = (line) => {
      let at = line;
      for (const [file, text] of u.parts) {
        const n = text.split('\n').length;
        if (at <= n) return `shaders/${file}:${at}`;
        at -= n;
      }
      return `line ${line}`;
    };
    const errors = messages.filter((m) => m.type === 'error');
    for (const m of messages) console.log(`  ${m.type}: ${where(m.lineNum)}:${m.linePos} ${m.message}`);
    console.log(`${errors.length ? 'FAIL' : 'ok  '} ${u.name}`);
    failed += errors.length ? 1 : 0;
  }
} finally {
  await browser.close();
  server.close();
}
if (failed) {
  console.error(`tests/web/wgsl.mjs: ${failed} of ${units.length} shaders do not compile in Chromium`);
  process.exit(1);
}
console.log(`tests/web/wgsl.mjs: all ${units.length} shaders compile in Chromium`);
