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
// content-length (the page's loaders show download progress with it). Resolves to
// { base, server }.
export async function serveStatic(site) {
  const http = await import('node:http');
  const path = await import('node:path');
  const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.json': 'application/json' };
  const server = http.createServer((req, res) => {
    const url = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    const file = path.join(site, url.endsWith('/') ? url + 'index.html' : url);
    if (!file.startsWith(site) || !fs.existsSync(file) || !fs.statSync(file).isFile()) return res.writeHead(404).end('not found');
    res.writeHead(200, { 'content-type': types[path.extname(file)] || 'application/octet-stream', 'content-length': fs.statSync(file).size });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  return { base: `http://127.0.0.1:${server.address().port}/`, server };
}
