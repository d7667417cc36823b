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
