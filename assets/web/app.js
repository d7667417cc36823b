// The page: picks a model, sends the worker what to do, streams its text into #output.
// All GPU work happens in worker.js, so the page stays responsive while a model writes.

import { attachLoader } from './loader.js';

const $ = (id) => document.getElementById(id);
const ui = {
  gpu: $('gpu'), served: $('served'), loadServed: $('load-served'), ggufFile: $('gguf-file'), hfDir: $('hf-dir'),
  url: $('url'), loadUrl: $('load-url'), progress: $('progress'), modelStatus: $('model-status'),
  chat: $('chat'), systemLabel: $('system-label'), system: $('system'), prompt: $('prompt'),
  write: $('write'), cancel: $('cancel'), speed: $('speed'), output: $('output'), summary: $('summary'),
  profile: $('profile'), profileTable: $('profile-table'),
};

let worker = null;
let loader = null;
let adapter = null;
let busy = false;
let model = null;
let started = 0;

const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;

function say(el, text, error = false) {
  el.textContent = text;
  el.classList.toggle('error', error);
}

function setBusy(b) {
  busy = b;
  for (const el of [ui.loadServed, ui.loadUrl, ui.ggufFile, ui.hfDir]) el.disabled = b || !adapter;
  ui.write.disabled = b || !model;
}

// Models listed in models.json beside the page (written by scripts/web.sh), then local
// models the browser has cached.
async function fillServed(cached) {
  ui.served.innerHTML = '';
  let served = [];
  try {
    const r = await fetch('models.json');
    if (r.ok) served = await r.json();
  } catch (_) { /* no list: the other pickers still work */ }
  const options = [
    ...served.map((m) => ({ label: m.name, source: m.url.endsWith('/') ? { kind: 'hf-url', url: m.url, files: m.files } : { kind: 'gguf-url', url: m.url } })),
    ...cached.map((m) => ({ label: `${m} (cached in this browser)`, source: { kind: 'cached', model: m } })),
  ];
  for (const o of options) {
    const opt = document.createElement('option');
    opt.textContent = o.label;
    opt.value = JSON.stringify(o.source);
    ui.served.append(opt);
  }
  if (!options.length) ui.served.innerHTML = '<option value="">(none found)</option>';
}

function load(source) {
  model = null;
  setBusy(true);
  ui.progress.hidden = false;
  ui.progress.value = 0;
  say(ui.modelStatus, 'Loading…');
  worker.postMessage({ type: 'load', source, options: loader.options() });
}

function generateOptions() {
  const num = (id, int = false) => {
    const v = $(id).value.trim();
    return v === '' ? undefined : (int ? parseInt(v, 10) : parseFloat(v));
  };
  return {
    prompt: ui.prompt.value,
    chat: ui.chat.checked,
    system: ui.chat.checked ? ui.system.value : undefined,
    max_tokens: num('max_tokens', true),
    temperature: num('temperature'),
    top_k: num('top_k', true),
    top_p: num('top_p'),
    min_p: num('min_p'),
    repeat_penalty: num('repeat_penalty'),
    seed: num('seed', true),
    ignore_eos: $('ignore_eos').checked,
    profile: ui.profile.checked,
  };
}

function write() {
  const options = generateOptions();
  ui.output.textContent = '';
  delete ui.output.dataset.done;
  if (!options.chat) {
    const p = document.createElement('span');
    p.className = 'prompt';
    p.textContent = options.prompt;
    ui.output.append(p);
  }
  say(ui.summary, 'Reading the prompt…');
  ui.speed.textContent = '';
  ui.profileTable.hidden = true;
  setBusy(true);
  ui.cancel.disabled = false;
  started = 0;
  worker.postMessage({ type: 'generate', options });
}

const handlers = {
  ready({ adapter: a, cached }) {
    adapter = a;
    const f16 = a.shader_f16 ? 'shader-f16' : 'no shader-f16 (not needed)';
    const ts = a.timestamps ? 'timestamp-query' : 'no timestamp-query (no per-pass profile)';
    say(ui.gpu, `GPU: ${a.named || a.name} — ${f16}, ${ts}; largest binding ${mb(a.max_storage_buffer_binding_size)}, largest buffer ${mb(a.max_buffer_size)}.`);
    ui.profile.disabled = !a.timestamps;
    fillServed(cached);
    setBusy(false);
  },
  progress({ phase, done, total }) {
    ui.progress.max = total || 1;
    ui.progress.value = total ? done : 0;
    say(ui.modelStatus, `${phase}: ${mb(done)}${total ? ` of ${mb(total)}` : ''}`);
  },
  loaded({ info }) {
    model = info;
    ui.progress.hidden = true;
    say(ui.modelStatus, `Loaded ${info.source}: ${info.architecture}, ${info.layers} layers, dim ${info.dim}, vocab ${info.vocab}, context ${info.context}; weights ${info.weights}, ${mb(info.weight_bytes)} on the GPU.`);
    ui.chat.disabled = !info.has_chat_template;
    if (!info.has_chat_template) ui.chat.checked = false;
    ui.systemLabel.hidden = !ui.chat.checked;
    setBusy(false);
  },
  piece({ text, n }) {
    if (!started) started = performance.now();
    ui.output.append(document.createTextNode(text));
    const secs = (performance.now() - started) / 1000;
    if (n > 1 && secs > 0) ui.speed.textContent = `${n} tokens, ${((n - 1) / secs).toFixed(1)} tokens/s`;
  },
  done({ stats: s }) {
    ui.cancel.disabled = true;
    setBusy(false);
    say(ui.summary, `${s.generated} tokens after a prompt of ${s.prompt_tokens}: first token in ${s.time_to_first_token_ms.toFixed(0)} ms, ` +
      `prefill ${s.prefill_tok_s.toFixed(1)} tokens/s, writing ${s.decode_tok_s.toFixed(1)} tokens/s; stopped: ${s.stop}. ` +
      `Seed ${s.seed}; ${s.sampling}.`);
    ui.speed.textContent = `${s.decode_tok_s.toFixed(1)} tokens/s`;
    ui.output.dataset.done = 'true';
    if (s.profile) {
      ui.profileTable.textContent = s.profile;
      ui.profileTable.hidden = false;
    }
  },
  error({ during, message }) {
    ui.progress.hidden = true;
    ui.cancel.disabled = true;
    if (during === 'init') {
      say(ui.gpu, `quill cannot run here: ${message}`, true);
      return;
    }
    const el = during === 'load' ? ui.modelStatus : ui.summary;
    const fit = /binding holds at most|the adapter allows|buffer .* needs/.test(message);
    say(el, fit ? `This model does not fit this GPU's limits: ${message}` : `Error while ${during === 'load' ? 'loading' : 'writing'}: ${message}`, true);
    setBusy(false);
  },
};

function start() {
  if (!('gpu' in navigator)) {
    say(ui.gpu, 'This browser has no WebGPU, which quill needs to run the model on your GPU. Use Chrome or Edge 113 or later (on Linux, start Chromium with --enable-unsafe-webgpu), or a Firefox or Safari version with WebGPU turned on.', true);
    return;
  }
  worker = new Worker('worker.js', { type: 'module' });
  loader = attachLoader(worker, { load });
  worker.onmessage = ({ data }) => loader.handle(data) || handlers[data.type](data);
  worker.onerror = (e) => say(ui.gpu, `The worker failed: ${e.message}`, true);
  // ?max_binding=N pretends the GPU binds at most N bytes, to see what a smaller GPU says.
  const maxBinding = parseInt(new URLSearchParams(location.search).get('max_binding'), 10);
  worker.postMessage({ type: 'init', maxBinding: Number.isFinite(maxBinding) ? maxBinding : undefined, ...loader.initOptions() });
  loader.refresh();
  setBusy(true);

  ui.loadServed.onclick = () => ui.served.value && load(JSON.parse(ui.served.value));
  ui.loadUrl.onclick = () => {
    const url = ui.url.value.trim();
    if (url) load(url.endsWith('/') ? { kind: 'hf-url', url } : { kind: 'gguf-url', url });
  };
  ui.ggufFile.onchange = () => ui.ggufFile.files[0] && load({ kind: 'gguf-file', file: ui.ggufFile.files[0] });
  ui.hfDir.onchange = () => ui.hfDir.files.length && load({ kind: 'hf-files', files: [...ui.hfDir.files] });
  ui.chat.onchange = () => { ui.systemLabel.hidden = !ui.chat.checked; };
  ui.write.onclick = write;
  ui.cancel.onclick = () => { worker.postMessage({ type: 'cancel' }); ui.cancel.disabled = true; };
}

start();
