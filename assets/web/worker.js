// The page's worker: owns quill (WebAssembly + WebGPU), reads model files (a GGUF a tensor
// at a time, from the browser's storage when it was read before: storage.js), loads and
// generates, so the page never freezes.
// Messages in: init, load {source}, generate {options}, cancel, cache-list, cache-remove {key},
// and the studio's tokenize {id, text}, detokenize {id, ids}, drafts {options}.
// Out: ready, progress, cache-note, loaded, piece, done, error, cache-list, and tokens {id, ids},
// text {id, text}, token {draft, text, logprob, alts}, drafted {summary}.
import init, { Quill } from './pkg/quill.js';
import * as storage from './storage.js';

const CACHE = 'quill-models-v1';
let quill = null;
let wasm = null;
let maxBinding;
// Peak WebAssembly memory (it only grows), for the page and the tests.
const wasmBytes = () => (wasm ? wasm.memory.buffer.byteLength : 0);

const post = (type, data = {}) => postMessage({ type, ...data });
const errorText = (e) => (e && e.message) ? e.message : String(e);

// Bytes of `url`, from the cache when there, else fetched (and cached). `optional`: a
// missing file gives null instead of an error.
async function fetchBytes(url, optional = false) {
  const cache = await caches.open(CACHE);
  let response = await cache.match(url);
  const cached = !!response;
  if (!response) {
    response = await fetch(url);
    if (!response.ok) {
      if (optional && response.status === 404) return null;
      throw new Error(`${url}: HTTP ${response.status} ${response.statusText}`);
    }
  }
  const total = Number(response.headers.get('content-length')) || 0;
  checkSize(name(url), total);
  const reader = response.clone().body.getReader();
  const parts = [];
  let done = 0;
  for (;;) {
    const { value, done: end } = await reader.read();
    if (end) break;
    parts.push(value);
    done += value.length;
    post('progress', { phase: cached ? `reading ${name(url)} from the browser cache` : `downloading ${name(url)}`, done, total });
  }
  // A refused write only skips the cache.
  if (!cached) await cache.put(url, response).catch((e) => post('cache-note', { text: `${name(url)} not cached: ${errorText(e)}` }));
  return concat(parts, done);
}

function concat(parts, n) {
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

const name = (path) => path.replace(/\/$/, '').split('/').pop();

// A local file, stored in the cache under a page-relative key so a reload can use it
// without picking it again.
async function localBytes(model, file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  try {
    const cache = await caches.open(CACHE);
    const key = new URL(`local/${encodeURIComponent(model)}/${encodeURIComponent(file.name)}`, self.location).href;
    await cache.put(key, new Response(bytes, { headers: { 'content-length': String(bytes.length) } }));
  } catch (e) {
    post('cache-note', { text: `${file.name} not cached: ${errorText(e)}` });
  }
  return bytes;
}

const HF_OPTIONAL = ['tokenizer_config.json', 'generation_config.json', 'chat_template.jinja'];

// The files of a Hugging Face folder at `base` (ending in /): config, tokenizer, the
// safetensors (one file or the shards of model.safetensors.index.json), optional extras.
async function fetchHfFolder(base, listed) {
  const names = [], files = [];
  const add = (n, b) => { if (b) { names.push(n); files.push(b); } };
  const wanted = listed || ['config.json', 'tokenizer.json', ...HF_OPTIONAL];
  for (const n of wanted) add(n, await fetchBytes(base + n, HF_OPTIONAL.includes(n)));
  if (!listed || !listed.some((n) => n.endsWith('.safetensors'))) {
    const single = await fetchBytes(base + 'model.safetensors', true);
    if (single) add('model.safetensors', single);
    else {
      const index = await fetchBytes(base + 'model.safetensors.index.json');
      const shards = [...new Set(Object.values(JSON.parse(new TextDecoder().decode(index)).weight_map))];
      for (const s of shards) add(s, await fetchBytes(base + s));
    }
  }
  return { names, files };
}

// WebAssembly (32-bit) addresses 4 GiB, and a model's file is copied in whole.
const WASM_FILE_LIMIT = 2 ** 31;

function checkSize(what, bytes) {
  if (bytes > WASM_FILE_LIMIT) {
    throw new Error(`${what} is ${(bytes / 2 ** 30).toFixed(1)} GiB; the page's WebAssembly memory (4 GiB) holds files up to ${WASM_FILE_LIMIT / 2 ** 30} GiB: use the command line (quill write) for this model`);
  }
}

// Streams a GGUF from `src` (a { size, read } byte source) to the GPU. `load` options from
// the page: ctx (KV cache positions), gpuMemory (bytes the GPU may use; default: quill's).
function loadGguf(label, src, options) {
  const progress = (done, total, tensors, totalTensors) =>
    post('progress', { phase: `uploading to the GPU (tensor ${tensors} of ${totalTensors})`, done, total, wasm: wasmBytes() });
  return quill.load_gguf_stream(label, src.size, src.read, options.ctx, options.gpuMemory, progress);
}

// A GGUF at `url`: from the browser's storage, else downloaded into it, else (storage
// refused) read from the server a tensor at a time.
async function ggufFromUrl(url, options) {
  const cached = await storage.cachedBlob(url);
  if (cached) {
    post('cache-note', { text: `${name(url)}: read from this browser's storage (${(cached.size / 1e6).toFixed(0)} MB), not downloaded again` });
    return loadGguf(name(url), storage.blobSource(cached), options);
  }
  // The limits first, from the header read by ranges: nothing is downloaded for a model that
  // does not fit. (A server without ranges: the load checks the same after the download.)
  const size = await storage.remoteSize(url);
  try {
    quill.check_gguf_stream(name(url), size, storage.rangeSource(url, size).read, options.ctx, options.gpuMemory);
  } catch (e) {
    if (!/range request/.test(errorText(e))) throw e;
  }
  const got = await storage.download(url, (done, total, resumed) =>
    post('progress', { phase: resumed ? `downloading ${name(url)} (resumed at ${(resumed / 1e6).toFixed(0)} MB)` : `downloading ${name(url)}`, done, total }));
  post('cache-note', { text: `${name(url)}: ${got.note}` });
  return loadGguf(name(url), got.blob ? storage.blobSource(got.blob) : storage.rangeSource(url, got.size), options);
}

// A picked GGUF file: stored first (so a reload need not pick it again), then read.
async function ggufFromFile(file, options) {
  quill.check_gguf_stream(file.name, file.size, storage.blobSource(file).read, options.ctx, options.gpuMemory);
  const note = await storage.store(file.name, file, (done, total) => post('progress', { phase: `storing ${file.name} in this browser`, done, total }));
  post('cache-note', { text: `${file.name}: ${note}` });
  return loadGguf(file.name, storage.blobSource(file), options);
}

async function load(source, options = {}) {
  const progress = (done, total) => post('progress', { phase: 'uploading to the GPU', done, total });
  // A lost device (driver reset, GPU taken away) gets a new one: load again without a reload.
  if (quill && quill.device_lost()) {
    post('cache-note', { text: 'the GPU device was lost: opening a new one' });
    quill = await Quill.create(maxBinding);
  }
  let info;
  if (source.kind === 'gguf-url') {
    info = await ggufFromUrl(source.url, options);
  } else if (source.kind === 'hf-url') {
    const { names, files } = await fetchHfFolder(source.url, source.files);
    info = quill.load_hf(name(source.url), names, files, progress);
  } else if (source.kind === 'gguf-file') {
    info = await ggufFromFile(source.file, options);
  } else if (source.kind === 'stored') {
    // A GGUF in this browser's storage, listed by storage.list().
    const blob = await storage.cachedBlob(source.key);
    if (!blob) throw new Error(`${source.key} is no longer in this browser's storage`);
    post('cache-note', { text: `${name(source.key)}: read from this browser's storage (${(blob.size / 1e6).toFixed(0)} MB)` });
    info = loadGguf(name(source.key), storage.blobSource(blob), options);
  } else if (source.kind === 'hf-files') {
    const dir = (source.files[0].webkitRelativePath || 'model/').split('/')[0];
    checkSize(dir, source.files.reduce((n, f) => n + f.size, 0));
    const names = [], files = [];
    for (const f of source.files) {
      if (f.name.endsWith('.safetensors') || f.name.endsWith('.json') || f.name.endsWith('.jinja')) {
        names.push(f.name);
        files.push(await localBytes(dir, f));
      }
    }
    info = quill.load_hf(dir, names, files, progress);
  } else if (source.kind === 'cached') {
    // A local model read before: its files are in the cache under local/<model>/.
    const cache = await caches.open(CACHE);
    const prefix = new URL(`local/${encodeURIComponent(source.model)}/`, self.location).href;
    const names = [], files = [];
    for (const req of await cache.keys()) {
      if (!req.url.startsWith(prefix)) continue;
      names.push(decodeURIComponent(req.url.slice(prefix.length)));
      files.push(await fetchBytes(req.url));
    }
    info = source.model.endsWith('.gguf') ? quill.load_gguf(source.model, files[0], progress) : quill.load_hf(source.model, names, files, progress);
  } else {
    throw new Error(`unknown model source ${source.kind}`);
  }
  return JSON.parse(info);
}

// Local models in the cache, for the page's list.
async function cachedLocalModels() {
  const cache = await caches.open(CACHE);
  const prefix = new URL('local/', self.location).href;
  const models = new Set();
  for (const req of await cache.keys()) {
    if (req.url.startsWith(prefix)) models.add(decodeURIComponent(req.url.slice(prefix.length).split('/')[0]));
  }
  return [...models];
}

onmessage = async ({ data: msg }) => {
  try {
    if (msg.type === 'init') {
      wasm = await init();
      maxBinding = msg.maxBinding;
      storage.setQuotaOverride(msg.storageQuota);
      if (!navigator.gpu) throw new Error('this browser offers no WebGPU in workers: use Chrome or Edge 113 or later (or chromium --enable-unsafe-webgpu)');
      quill = await Quill.create(maxBinding);
      // wgpu does not pass on what the browser tells of the adapter; ask WebGPU directly.
      const info = (await navigator.gpu.requestAdapter())?.info || {};
      const named = [info.vendor, info.architecture, info.description].filter(Boolean).join(' ');
      post('ready', { adapter: { ...JSON.parse(quill.adapter()), named }, cached: await cachedLocalModels() });
    } else if (msg.type === 'load') {
      const info = await load(msg.source, msg.options);
      post('loaded', { info: { ...info, wasm_bytes: wasmBytes() } });
    } else if (msg.type === 'cache-list') {
      post('cache-list', { models: await storage.list() });
    } else if (msg.type === 'cache-remove') {
      await storage.remove(msg.key);
      post('cache-list', { models: await storage.list() });
    } else if (msg.type === 'generate') {
      const stats = await quill.generate(JSON.stringify(msg.options), (text, n) => post('piece', { text, n }));
      post('done', { stats: { ...JSON.parse(stats), wasm_bytes: wasmBytes() } });
    } else if (msg.type === 'tokenize') {
      post('tokens', { id: msg.id, ids: Array.from(quill.tokenize(msg.text)) });
    } else if (msg.type === 'detokenize') {
      post('text', { id: msg.id, text: quill.detokenize(Uint32Array.from(msg.ids)) });
    } else if (msg.type === 'drafts') {
      const summary = await quill.write_drafts(JSON.stringify(msg.options),
        (draft, text, logprob, alts) => post('token', { draft, text, logprob, alts: JSON.parse(alts) }));
      post('drafted', { summary: { ...JSON.parse(summary), wasm_bytes: wasmBytes() } });
    } else if (msg.type === 'cancel') {
      quill && quill.cancel();
    }
  } catch (e) {
    const lost = quill && msg.type !== 'init' && quill.device_lost();
    post('error', { during: msg.type, id: msg.id, message: lost ? `the GPU device was lost (${errorText(e)}); load the model again` : errorText(e) });
  }
};
