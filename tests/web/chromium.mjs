// Headless Chromium with WebGPU (SwiftShader without a GPU) and a fresh profile, as the page
// tests use it.
import { chromium } from 'playwright-core';
import fs from 'node:fs';

export function launch(viewport) {
  const userDir = fs.mkdtempSync('/tmp/quill-chromium-');
  return chromium.launchPersistentContext(userDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless=new', '--no-sandbox', '--disable-gpu-sandbox', '--enable-unsafe-webgpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
    viewport,
  });
}

// The browser's first page, with its console and errors noted in `log` (shown on a failure).
export async function pageWithLog(browser) {
  const page = browser.pages()[0] || await browser.newPage();
  const log = [];
  page.on('console', (m) => log.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log.push(`page error: ${e.message}`));
  return { page, log };
}

// A static file server for `site` (target/web) on a free port of 127.0.0.1, with
// content-length (the page's loaders show download progress with it), HEAD and single range
// requests (`bytes=a-b`, `bytes=a-`), as the servers models are downloaded from answer them.
// `extra` maps more URL paths ('/models/x.gguf') to files outside `site`. Counts the GETs of
// each path: `gets.get(path)` is { full, ranged } (undefined before the first). Resolves to
// { base, server, gets }.
export async function serveStatic(site, extra = {}) {
  const http = await import('node:http');
  const path = await import('node:path');
  const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.json': 'application/json' };
  const gets = new Map();
  const server = http.createServer((req, res) => {
    const url = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    const file = extra[url] || path.join(site, url.endsWith('/') ? url + 'index.html' : url);
    if (!(extra[url] || file.startsWith(site)) || !fs.existsSync(file) || !fs.statSync(file).isFile()) return res.writeHead(404).end('not found');
    const size = fs.statSync(file).size;
    const headers = { 'content-type': types[path.extname(file)] || 'application/octet-stream', 'accept-ranges': 'bytes' };
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range || '');
    if (req.method === 'GET') {
      const n = gets.get(url) || { full: 0, ranged: 0 };
      n[range ? 'ranged' : 'full'] += 1;
      gets.set(url, n);
    }
    if (range) {
      const start = Number(range[1]);
      const end = range[2] ? Math.min(Number(range[2]), size - 1) : size - 1;
      res.writeHead(206, { ...headers, 'content-length': end - start + 1, 'content-range': `bytes ${start}-${end}/${size}` });
      if (req.method === 'HEAD') return res.end();
      return fs.createReadStream(file, { start, end }).pipe(res);
    }
    res.writeHead(200, { ...headers, 'content-length': size });
    if (req.method === 'HEAD') return res.end();
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  return { base: `http://127.0.0.1:${server.address().port}/`, server, gets };
}
