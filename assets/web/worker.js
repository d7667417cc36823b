// The page's worker: owns quill (WebAssembly + WebGPU), reads model files (from the Cache
// API when they were read before), loads and generates, so the page never freezes.
// Messages in: init, load {source}, generate {options}, cancel, and the studio's tokenize
// {id, text}, detokenize {id, ids}, drafts {options}. Out: ready, progress, loaded, piece,
// done, error, and tokens {id, ids}, text {id, text}, token {draft, text, logprob, alts},
// drafted {summary}.
import init, { Quill } from './pkg/quill.js';

const CACHE = 'quill-models-v1';
let quill = null;

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
  if (!cached) await cache.put(url, response);
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
  const cache = await caches.open(CACHE);
  const key = new URL(`local/${encodeURIComponent(model)}/${encodeURIComponent(file.name)}`, self.location).href;
  await cache.put(key, new Response(bytes, { headers: { 'content-length': String(bytes.length) } }));
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

async function load(source) {
  const progress = (done, total) => post('progress', { phase: 'uploading to the GPU', done, total });
  let info;
  if (source.kind === 'gguf-url') {
    const bytes = await fetchBytes(source.url);
    info = quill.load_gguf(name(source.url), bytes, progress);
  } else if (source.kind === 'hf-url') {
    const { names, files } = await fetchHfFolder(source.url, source.files);
    info = quill.load_hf(name(source.url), names, files, progress);
  } else if (source.kind === 'gguf-file') {
    checkSize(source.file.name, source.file.size);
    const bytes = await localBytes(source.file.name, source.file);
    info = quill.load_gguf(source.file.name, bytes, progress);
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
      await init();
      if (!navigator.gpu) throw new Error('this browser offers no WebGPU in workers: use Chrome or Edge 113 or later (or chromium --enable-unsafe-webgpu)');
      quill = await Quill.create(msg.maxBinding);
      // wgpu does not pass on what the browser tells of the adapter; ask WebGPU directly.
      const info = (await navigator.gpu.requestAdapter())?.info || {};
      const named = [info.vendor, info.architecture, info.description].filter(Boolean).join(' ');
      post('ready', { adapter: { ...JSON.parse(quill.adapter()), named }, cached: await cachedLocalModels() });
    } else if (msg.type === 'load') {
      const info = await load(msg.source);
      post('loaded', { info });
    } else if (msg.type === 'generate') {
      const stats = await quill.generate(JSON.stringify(msg.options), (text, n) => post('piece', { text, n }));
      post('done', { stats: JSON.parse(stats) });
    } else if (msg.type === 'tokenize') {
      post('tokens', { id: msg.id, ids: Array.from(quill.tokenize(msg.text)) });
    } else if (msg.type === 'detokenize') {
      post('text', { id: msg.id, text: quill.detokenize(Uint32Array.from(msg.ids)) });
    } else if (msg.type === 'drafts') {
      const summary = await quill.write_drafts(JSON.stringify(msg.options),
        (draft, text, logprob, alts) => post('token', { draft, text, logprob, alts: JSON.parse(alts) }));
      post('drafted', { summary: JSON.parse(summary) });
    } else if (msg.type === 'cancel') {
      quill && quill.cancel();
    }
  } catch (e) {
    post('error', { during: msg.type, id: msg.id, message: errorText(e) });
  }
};
