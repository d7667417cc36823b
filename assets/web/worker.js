// The page's worker: owns quill (WebAssembly + WebGPU), reads model files (a GGUF a tensor
// at a time, from the browser's storage when it was read before: storage.js), loads and
// generates, so the page never freezes.
// Messages in: init, load {source, options}, generate {options}, cancel, cache-list, cache-remove
// {key}, and the studio's tokenize {id, text}, detokenize {id, ids}, drafts {options}; the
// fine-tune panel's finetune {text, options}; test-lose-device (a test hook: destroys the GPU
// device).
// Out: ready, progress, cache-note, loaded, piece, done, error, cache-list, and tokens {id, ids},
// text {id, text}, token {draft, text, logprob, alts}, drafted {summary}; train-step {step, loss},
// trained {losses, cancelled, config, weights}.
import init, { Quill } from './pkg/quill.js';
import * as storage from './storage.js';

const CACHE = 'quill-models-v1';
let quill = null;
let wasm = null;
let maxBinding;
// The loaded model's files, for the trainer: { dir, small, shards } ([name, Blob] pairs) of a
// Hugging Face folder, or { gguf: name }.
let current = null;
// Peak WebAssembly memory (it only grows), for the page and the tests.
const wasmBytes = () => (wasm ? wasm.memory.buffer.byteLength : 0);

const post = (type, data = {}) => postMessage({ type, ...data });
const errorText = (e) => (e && e.message) ? e.message : String(e);

// `url` as a Blob, from the cache when there, else fetched (and cached). `optional`: a
// missing file gives null instead of an error. The Blob lives in the browser (a cached one
// on disk), not in WebAssembly: the loader reads it a tensor at a time.
async function fetchBlob(url, optional = false) {
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
  return new Blob(parts);
}

const name = (path) => path.replace(/\/$/, '').split('/').pop();

// A local file, stored in the cache under a page-relative key so a reload can use it
// without picking it again. The File itself is stored (the browser streams it), not a copy in
// memory; a refused write only skips the cache.
async function cacheLocal(model, file) {
  try {
    const cache = await caches.open(CACHE);
    const key = new URL(`local/${encodeURIComponent(model)}/${encodeURIComponent(file.name)}`, self.location).href;
    await cache.put(key, new Response(file, { headers: { 'content-length': String(file.size) } }));
  } catch (e) {
    post('cache-note', { text: `${file.name} not cached: ${errorText(e)}` });
  }
}

// A shard as quill reads it: a Blob (a picked or stored file) through FileReaderSync, or
// already a { size, read } byte source (a URL read by ranges).
const shardSource = (s) => (typeof s.read === 'function' ? s : storage.blobSource(s));

// The small files of a folder as quill takes them: names, and each file's bytes.
async function smallFiles(small) {
  const names = [], files = [];
  for (const [n, blob] of small) {
    names.push(n);
    files.push(new Uint8Array(await blob.arrayBuffer()));
  }
  return { names, files };
}

// Loads a Hugging Face folder: the small files whole, each safetensors shard (a Blob, or a
// { size, read } source: shardSource) a tensor at a time, so WebAssembly holds one tensor,
// never a shard. `small` maps a name to its Blob. Planned as a GGUF is (`options`: see
// loadGguf): a folder that does not fit is refused before any upload. `options.adapter`
// ({ name, config, weights }: a PEFT adapter the fine-tune panel kept) is merged as it loads.
async function loadHfBlobs(dir, small, shards, options) {
  // With a shard index, its shards and no other .safetensors beside them.
  const index = small.find(([n]) => n === 'model.safetensors.index.json');
  if (index) {
    const wanted = new Set(await indexShards(`${dir}/model.safetensors.index.json`, index[1]));
    const missing = [...wanted].filter((w) => !shards.some(([n]) => n === w));
    if (missing.length) throw new Error(`${dir}: model.safetensors.index.json names ${missing.join(', ')}, not among the files given`);
    shards = shards.filter(([n]) => wanted.has(n));
  }
  const { names, files } = await smallFiles(small);
  if (!shards.length) throw new Error(`${dir}: no .safetensors file among the files given`);
  const sources = shards.map(([, s]) => shardSource(s));
  const progress = (done, total, tensors, totalTensors) =>
    post('progress', { phase: `uploading to the GPU (tensor ${tensors} of ${totalTensors})`, done, total, wasm: wasmBytes() });
  const adapter = options.adapter;
  const lora = adapter ? [new TextEncoder().encode(adapter.config), adapter.weights] : [undefined, undefined];
  const info = quill.load_hf_stream(dir, names, files, shards.map(([n]) => n), sources.map((s) => s.size), sources.map((s) => s.read),
    options.ctx, options.gpuMemory, ...lora, progress);
  current = { dir, small, shards };
  return info;
}

// The shard names of a model.safetensors.index.json (a Blob), in order, each once.
async function indexShards(label, blob) {
  let map;
  try { map = JSON.parse(await blob.text()).weight_map; } catch (e) { throw new Error(`${label}: not valid JSON: ${errorText(e)}`); }
  if (!map || typeof map !== 'object') throw new Error(`${label} has no weight_map object`);
  return [...new Set(Object.values(map).map(String))];
}

const HF_OPTIONAL = ['tokenizer_config.json', 'generation_config.json', 'chat_template.jinja'];

// The size of the file at `url`, or null when the server has none (404).
async function sizeOrNull(url) {
  const head = await fetch(url, { method: 'HEAD' });
  if (head.status === 404) return null;
  if (!head.ok) throw new Error(`${url}: HTTP ${head.status} ${head.statusText}`);
  return Number(head.headers.get('content-length')) || 0;
}

// A Hugging Face folder at `base` (ending in /; `listed`: its file names, when the page knows
// them). The small files are fetched whole (config, tokenizer, the optional extras, a shard
// index). Each safetensors comes from this browser's storage when a complete copy is there;
// the others are first checked with the folder's needs from their headers alone, read by
// ranges, so a folder that does not fit downloads nothing; then each is downloaded into
// storage, or, where storage refuses, read from the server a tensor at a time.
async function hfFromUrl(base, listed, options) {
  const dir = name(base);
  const small = [];
  for (const n of (listed || ['config.json', 'tokenizer.json', ...HF_OPTIONAL]).filter((f) => !f.endsWith('.safetensors'))) {
    const blob = await fetchBlob(base + n, HF_OPTIONAL.includes(n));
    if (blob) small.push([n, blob]);
  }
  let shardNames = (listed || []).filter((f) => f.endsWith('.safetensors'));
  if (!shardNames.length) {
    if (await storage.cachedBlob(base + 'model.safetensors') || await sizeOrNull(base + 'model.safetensors') !== null) {
      shardNames = ['model.safetensors'];
    } else {
      const index = await fetchBlob(base + 'model.safetensors.index.json');
      small.push(['model.safetensors.index.json', index]);
      shardNames = await indexShards(`${base}model.safetensors.index.json`, index);
    }
  }
  const shards = [];
  for (const n of shardNames) {
    const stored = await storage.cachedBlob(base + n);
    const size = stored ? stored.size : await storage.remoteSize(base + n);
    // A server that does not say a file's size can only be read whole (the old way).
    if (!size) return loadHfBlobs(dir, small, await Promise.all(shardNames.map(async (s) => [s, await fetchBlob(base + s)])), options);
    shards.push([n, stored || storage.rangeSource(base + n, size)]);
  }
  const stored = shards.filter(([, s]) => s instanceof Blob).length;
  if (stored) post('cache-note', { text: `${dir}: ${stored} of ${shards.length} safetensors read from this browser's storage, not downloaded again` });
  if (stored < shards.length) {
    // The limits first, from the headers: nothing is downloaded for a folder that does not
    // fit. (A server without ranges: the load checks the same after the download.)
    const { names, files } = await smallFiles(small);
    const sources = shards.map(([, s]) => shardSource(s));
    try {
      quill.check_hf_stream(dir, names, files, shards.map(([n]) => n), sources.map((s) => s.size), sources.map((s) => s.read), options.ctx, options.gpuMemory);
    } catch (e) {
      if (!/range request/.test(errorText(e))) throw e;
    }
    const notes = [];
    for (const shard of shards) {
      if (shard[1] instanceof Blob) continue;
      const url = base + shard[0];
      const got = await storage.download(url, (done, total, resumed) =>
        post('progress', { phase: resumed ? `downloading ${shard[0]} (resumed at ${(resumed / 1e6).toFixed(0)} MB)` : `downloading ${shard[0]}`, done, total }));
      notes.push(`${shard[0]}: ${got.note}`);
      if (got.blob) shard[1] = got.blob;
    }
    post('cache-note', { text: `${dir}: ${notes.join('; ')}` });
  }
  return loadHfBlobs(dir, small, shards, options);
}

// Streams a GGUF from `src` (a { size, read } byte source) to the GPU. `load` options from
// the page: ctx (KV cache positions), gpuMemory (bytes the GPU may use; default: quill's).
function loadGguf(label, src, options) {
  if (options.adapter) throw new Error(`the adapter “${options.adapter.name}” was trained on a Hugging Face safetensors model; ${label} is a GGUF file`);
  current = { gguf: label };
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
  // A lost device (driver reset, GPU taken away) gets a new one: load again without a reload.
  if (quill && quill.device_lost()) {
    post('cache-note', { text: 'the GPU device was lost: opening a new one' });
    quill = await Quill.create(maxBinding);
  }
  current = null;
  let info;
  if (source.kind === 'gguf-url') {
    info = await ggufFromUrl(source.url, options);
  } else if (source.kind === 'hf-url') {
    info = await hfFromUrl(source.url, source.files, options);
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
    const small = [], shards = [];
    for (const f of source.files) {
      if (f.name.endsWith('.safetensors')) shards.push([f.name, f]);
      else if (f.name.endsWith('.json') || f.name.endsWith('.jinja')) small.push([f.name, f]);
    }
    info = await loadHfBlobs(dir, small, shards, options);
    // Stored once loaded: a folder refused (too big, device lost) is not kept.
    for (const [, f] of [...small, ...shards]) await cacheLocal(dir, f);
  } else if (source.kind === 'cached') {
    // A local model read before: its files are in the cache under local/<model>/.
    const cache = await caches.open(CACHE);
    const prefix = new URL(`local/${encodeURIComponent(source.model)}/`, self.location).href;
    const small = [], shards = [];
    for (const req of await cache.keys()) {
      if (!req.url.startsWith(prefix)) continue;
      const n = decodeURIComponent(req.url.slice(prefix.length));
      const blob = await (await cache.match(req)).blob();
      (n.endsWith('.safetensors') || n.endsWith('.gguf') ? shards : small).push([n, blob]);
    }
    if (source.model.endsWith('.gguf')) {
      if (!shards.length) throw new Error(`${source.model} is no longer in this browser's cache`);
      info = loadGguf(source.model, storage.blobSource(shards[0][1]), options);
    } else {
      info = await loadHfBlobs(source.model, small, shards, options);
    }
  } else {
    throw new Error(`unknown model source ${source.kind}`);
  }
  return JSON.parse(info);
}

// Trains a LoRA adapter on `text` with the loaded model's files (the trainer reads a Hugging
// Face folder with one model.safetensors), posting each step's loss; `options` as
// Quill.finetune_lora takes them. Posts the adapter as PEFT writes it.
async function finetune(text, options) {
  if (!current) throw new Error('load a model first: the fine-tune trains on the loaded model');
  if (current.gguf) throw new Error(`${current.gguf} is a GGUF file: the browser's trainer reads a Hugging Face safetensors folder (config.json and model.safetensors, such as llama-tiny)`);
  const config = current.small.find(([n]) => n === 'config.json');
  if (current.shards.length !== 1 || !config) throw new Error(`${current.dir} has ${current.shards.length} safetensors files${config ? '' : ' and no config.json'}: the browser's trainer reads a folder with config.json and one model.safetensors`);
  const ids = quill.tokenize(text);
  if (ids.length < options.seq_len + 1) throw new Error(`the text is ${ids.length} tokens; a sequence of ${options.seq_len} tokens needs at least ${options.seq_len + 1}: paste more text or lower the sequence length`);
  const bytes = async (blob) => new Uint8Array(await blob.arrayBuffer());
  const shard = shardSource(current.shards[0][1]);
  const done = await quill.finetune_lora(await bytes(config[1]), shard.read(0, shard.size), ids, JSON.stringify(options),
    (step, loss) => post('train-step', { step, loss }));
  const weights = done.adapter_model;
  postMessage({ type: 'trained', losses: JSON.parse(done.losses), cancelled: done.cancelled, config: done.adapter_config, weights }, [weights.buffer]);
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
      // A load is one synchronous call, and WebGPU tells of a lost device through a promise:
      // a device lost in the middle of it shows only now. Its model is not a model.
      await new Promise((settled) => setTimeout(settled, 50));
      if (quill.device_lost()) throw new Error(`while loading ${info.source}`);
      post('loaded', { info: { ...info, adapter: msg.options?.adapter?.name, wasm_bytes: wasmBytes() } });
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
    } else if (msg.type === 'finetune') {
      await finetune(msg.text, msg.options);
    } else if (msg.type === 'cancel') {
      quill && quill.cancel();
    } else if (msg.type === 'test-lose-device') {
      // The page's ?test_hooks (loader.js): lose the device now (e.g. in the middle of a
      // generation), or during the next load once `tensors` tensors are uploaded.
      if (quill && msg.tensors !== undefined) quill.destroy_device_during_load_for_test(msg.tensors);
      else if (quill) quill.destroy_device_for_test();
    }
  } catch (e) {
    // WebGPU tells of a lost device through a promise: the failed call can come first, so let
    // it settle before asking.
    if (quill && msg.type !== 'init') await new Promise((settled) => setTimeout(settled, 50));
    const lost = quill && msg.type !== 'init' && quill.device_lost();
    post('error', { during: msg.type, id: msg.id, message: lost ? `the GPU device was lost (${errorText(e)}); load the model again` : errorText(e) });
  }
};
