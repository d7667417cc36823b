// The worker's model files: where their bytes come from (a picked File, a URL, a cached copy)
// and the browser's storage for them. quill reads a GGUF a tensor at a time through a
// synchronous `read(offset, length)` (Quill.load_gguf_stream), so nothing here ever holds a
// whole model: a File or a cached copy is read with FileReaderSync on a slice, a URL that
// could not be cached with a synchronous range request.
//
// Caching never stops a load: the Origin Private File System first, the Cache API where
// OPFS is missing; the quota is checked first (navigator.storage.estimate()), and a refused
// or failed write only skips the cache, with the reason in words ("not cached: the browser
// allows N MB here"). A download goes into OPFS as it streams, so after a reload it resumes
// from the part already there where the server answers range requests.

const CACHE = 'quill-models-v1';
const OPFS_DIR = 'quill-models';
const MB = 1e6;
const mb = (n) => `${(n / MB).toFixed(0)} MB`;

// Test hook and knob: ?storage_quota=N (bytes) pretends the browser allows that much.
let quotaOverride = null;
export function setQuotaOverride(bytes) { quotaOverride = Number.isFinite(bytes) ? bytes : null; }

// A synchronous byte source over a Blob (a File, or a cached file): what quill reads.
export function blobSource(blob) {
  const reader = new FileReaderSync();
  return { size: blob.size, read: (offset, length) => new Uint8Array(reader.readAsArrayBuffer(blob.slice(offset, offset + length))) };
}

// A synchronous byte source over HTTP range requests (workers may block on XHR).
export function rangeSource(url, size) {
  return {
    size,
    read(offset, length) {
      const x = new XMLHttpRequest();
      x.open('GET', url, false);
      x.responseType = 'arraybuffer';
      x.setRequestHeader('Range', `bytes=${offset}-${offset + length - 1}`);
      x.send();
      if (x.status !== 206) throw new Error(`${url}: HTTP ${x.status} ${x.statusText} to a range request (reading a model that is not cached needs a server that answers ranges)`);
      return new Uint8Array(x.response);
    },
  };
}

const safeName = (key) => encodeURIComponent(key).replace(/\./g, '%2E');

async function opfsDir() {
  if (!navigator.storage?.getDirectory) return null;
  try {
    return await (await navigator.storage.getDirectory()).getDirectoryHandle(OPFS_DIR, { create: true });
  } catch (_) {
    return null;
  }
}

// Bytes the browser lets this page store beyond what it already does.
async function room() {
  if (quotaOverride !== null) return quotaOverride;
  if (!navigator.storage?.estimate) return Infinity;
  const { quota = Infinity, usage = 0 } = await navigator.storage.estimate();
  return quota - usage;
}

// What OPFS knows of a file: its manifest (key, size, complete, url) beside its bytes.
async function readManifest(dir, key) {
  try {
    const f = await (await dir.getFileHandle(`${safeName(key)}.json`)).getFile();
    return JSON.parse(await f.text());
  } catch (_) {
    return null;
  }
}

async function writeManifest(dir, manifest) {
  const w = await (await dir.getFileHandle(`${safeName(manifest.key)}.json`, { create: true })).createWritable();
  await w.write(JSON.stringify(manifest));
  await w.close();
}

// The cached copy of `key` when complete: a File (OPFS) or a Blob (Cache API), else null.
export async function cachedBlob(key) {
  const dir = await opfsDir();
  if (dir) {
    const m = await readManifest(dir, key);
    if (m && m.complete) {
      try {
        const f = await (await dir.getFileHandle(safeName(key))).getFile();
        if (f.size === m.size) return f;
      } catch (_) { /* gone: not cached */ }
    }
  }
  try {
    const r = await (await caches.open(CACHE)).match(cacheUrl(key));
    return r ? await r.blob() : null;
  } catch (_) {
    return null;
  }
}

const cacheUrl = (key) => new URL(`cached/${safeName(key)}`, self.location).href;

// Stores `blob` (a picked file) under `key`. Resolves to a sentence saying where it went, or
// why it did not ("not cached: …"); never throws.
export async function store(key, blob, progress) {
  const left = await room();
  if (blob.size > left) return `not cached: the browser allows ${mb(Math.max(0, left))} here and the file is ${mb(blob.size)}`;
  const dir = await opfsDir();
  if (dir) {
    try {
      await writeManifest(dir, { key, size: blob.size, complete: false });
      const w = await (await dir.getFileHandle(safeName(key), { create: true })).createWritable();
      const reader = blob.stream().getReader();
      let done = 0;
      for (;;) {
        const { value, done: end } = await reader.read();
        if (end) break;
        await w.write(value);
        done += value.length;
        progress(done, blob.size);
      }
      await w.close();
      await writeManifest(dir, { key, size: blob.size, complete: true });
      return `cached in this browser (${mb(blob.size)}, Origin Private File System)`;
    } catch (e) {
      await removeOpfs(dir, key);
      return `not cached: the browser refused the write (${e.message || e}; it allows ${mb(Math.max(0, left))} here)`;
    }
  }
  try {
    await (await caches.open(CACHE)).put(cacheUrl(key), new Response(blob, { headers: { 'content-length': String(blob.size) } }));
    return `cached in this browser (${mb(blob.size)}, Cache API)`;
  } catch (e) {
    return `not cached: the browser refused the write (${e.message || e}; it allows ${mb(Math.max(0, left))} here)`;
  }
}

// The size of the file at `url` (a HEAD request); HTTP errors throw with the status in words.
export async function remoteSize(url) {
  const head = await fetch(url, { method: 'HEAD' });
  if (!head.ok) throw new Error(`${url}: HTTP ${head.status} ${head.statusText}`);
  return Number(head.headers.get('content-length')) || 0;
}

// Downloads `url` into OPFS as it streams, resuming from a part a reload left behind where
// the server answers ranges. Resolves to { blob, note } with the complete cached file, or
// { blob: null, size, note } when it could not be stored (the caller then reads the URL by
// ranges). HTTP errors throw with the status in words.
export async function download(url, progress) {
  const key = url;
  const dir = await opfsDir();
  const size = await remoteSize(url);
  const left = await room();
  if (!dir || !size || size > left) {
    const why = !dir ? 'this browser offers no Origin Private File System to workers'
      : !size ? 'the server does not say the file\'s size'
      : `the browser allows ${mb(Math.max(0, left))} here and the file is ${mb(size)}`;
    return { blob: null, size, note: `not cached: ${why}` };
  }
  try {
    const old = await readManifest(dir, key);
    const handle = await dir.getFileHandle(safeName(key), { create: true });
    let have = old && old.size === size ? (await handle.getFile()).size : 0;
    if (have > size) have = 0;
    if (have < size) {
      const response = await fetch(url, have ? { headers: { Range: `bytes=${have}-` } } : {});
      if (!response.ok) throw Object.assign(new Error(`${url}: HTTP ${response.status} ${response.statusText}`), { http: true });
      if (response.status !== 206) have = 0; // no ranges: start again
      await writeManifest(dir, { key, url, size, complete: false });
      const w = await handle.createWritable({ keepExistingData: have > 0 });
      await w.truncate(have);
      await w.seek(have);
      const reader = response.body.getReader();
      const resumed = have;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        await w.write(value);
        have += value.length;
        progress(have, size, resumed);
      }
      await w.close();
      if (have !== size) throw Object.assign(new Error(`${url}: the download ended after ${have} of ${size} bytes`), { http: true });
      await writeManifest(dir, { key, url, size, complete: true });
    }
    return { blob: await handle.getFile(), note: `cached in this browser (${mb(size)}, Origin Private File System)` };
  } catch (e) {
    if (e.http) throw e;
    await removeOpfs(dir, key);
    return { blob: null, size, note: `not cached: the browser refused the write (${e.message || e}; it allows ${mb(Math.max(0, left))} here)` };
  }
}

async function removeOpfs(dir, key) {
  for (const n of [safeName(key), `${safeName(key)}.json`]) {
    try { await dir.removeEntry(n); } catch (_) { /* not there */ }
  }
}

// Every cached model: { key, size, complete, where }.
export async function list() {
  const out = [];
  const dir = await opfsDir();
  if (dir) {
    for await (const [name] of dir.entries()) {
      if (!name.endsWith('.json')) continue;
      const m = await readManifest(dir, decodeURIComponent(name.slice(0, -5)));
      if (m) out.push({ key: m.key, size: m.size, complete: !!m.complete, where: 'OPFS' });
    }
  }
  try {
    const cache = await caches.open(CACHE);
    for (const req of await cache.keys()) {
      const r = await cache.match(req);
      out.push({ key: decodeURIComponent(req.url.split('/').pop()), size: Number(r.headers.get('content-length')) || 0, complete: true, where: 'Cache API', url: req.url });
    }
  } catch (_) { /* no Cache API */ }
  return out;
}

export async function remove(key) {
  const dir = await opfsDir();
  if (dir) await removeOpfs(dir, key);
  try {
    const cache = await caches.open(CACHE);
    await cache.delete(cacheUrl(key));
    // Entries the page's older versions stored under other URLs.
    for (const req of await cache.keys()) if (decodeURIComponent(req.url.split('/').pop()) === key) await cache.delete(req);
  } catch (_) { /* no Cache API */ }
}
