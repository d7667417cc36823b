// The page's loader panel: the context to plan for, what the browser's storage holds (each
// cached model with its size, loadable and removable), what the last load said about caching,
// and the WebAssembly memory the worker has used. app.js mounts it and routes the worker's
// cache-note and cache-list messages here (kept apart from the writing UI).
//
// Page parameters: ?max_binding=N (app.js), ?gpu_memory=N (bytes the GPU may use, instead of
// quill's default or half of navigator.deviceMemory), ?storage_quota=N (pretend the browser
// allows N bytes of storage; 0 refuses every cache write), ?test_hooks (window.quillTestHooks:
// loseDevice() destroys the worker's GPU device, loseDeviceDuringLoad(n) during the next load
// once n tensors are uploaded; for tests/web/e2e-stream.mjs).

const mb = (n) => `${(n / 1e6).toFixed(0)} MB`;

export function attachLoader(worker, { load }) {
  const params = new URLSearchParams(location.search);
  const number = (k) => { const v = parseFloat(params.get(k)); return Number.isFinite(v) ? v : undefined; };
  const section = document.createElement('section');
  section.id = 'loader-section';
  section.innerHTML = `
    <h2>Loading and storage</h2>
    <div class="row">
      <label>Context (KV cache positions) <input type="number" id="ctx" min="1" placeholder="the model's, up to 2048"></label>
    </div>
    <p id="cache-note" class="status"></p>
    <p id="wasm-memory" class="status"></p>
    <p id="storage-summary" class="status">Models stored in this browser: none.</p>
    <table id="cached-models"></table>`;
  (document.getElementById('model-section') || document.body.firstElementChild).after(section);
  const el = (id) => section.querySelector(`#${id}`);

  // Ask once that the browser keep what is stored (it may say no; storing still works).
  navigator.storage?.persist?.().then((granted) => {
    el('storage-summary').dataset.persisted = String(granted);
  }).catch(() => {});

  if (params.has('test_hooks')) {
    window.quillTestHooks = {
      loseDevice: () => worker.postMessage({ type: 'test-lose-device' }),
      loseDeviceDuringLoad: (tensors) => worker.postMessage({ type: 'test-lose-device', tensors }),
    };
  }

  const deviceHint = navigator.deviceMemory ? navigator.deviceMemory * 2 ** 30 / 2 : undefined;
  const showList = (models) => {
    const table = el('cached-models');
    table.innerHTML = '';
    const total = models.reduce((n, m) => n + m.size, 0);
    el('storage-summary').textContent = models.length
      ? `Models stored in this browser: ${models.length}, ${mb(total)}${el('storage-summary').dataset.persisted === 'true' ? ' (persistent)' : ''}.`
      : 'Models stored in this browser: none.';
    for (const m of models) {
      const row = table.insertRow();
      row.dataset.key = m.key;
      row.insertCell().textContent = m.key.split('/').pop();
      row.insertCell().textContent = `${mb(m.size)}${m.complete ? '' : ' (partial: a download resumes from here)'}`;
      row.insertCell().textContent = m.where;
      const actions = row.insertCell();
      // A folder's safetensors are stored one by one and load with their folder, not alone.
      if (m.complete && m.where === 'OPFS' && !m.key.endsWith('.safetensors')) {
        const b = document.createElement('button');
        b.textContent = 'Load';
        b.className = 'load-stored';
        b.onclick = () => load({ kind: 'stored', key: m.key });
        actions.append(b);
      }
      const r = document.createElement('button');
      r.textContent = 'Remove';
      r.className = 'remove-stored';
      r.onclick = () => worker.postMessage({ type: 'cache-remove', key: m.key });
      actions.append(r);
    }
  };

  return {
    // What `init` needs from the page's parameters.
    initOptions: () => ({ storageQuota: number('storage_quota') }),
    // What `load` plans for.
    options: () => {
      const ctx = parseInt(el('ctx').value, 10);
      const asked = number('gpu_memory');
      return { ctx: Number.isFinite(ctx) ? ctx : undefined, gpuMemory: asked ?? deviceHint };
    },
    refresh: () => worker.postMessage({ type: 'cache-list' }),
    // Messages of the worker that are the loader's; true when handled.
    handle(msg) {
      if (msg.type === 'cache-note') el('cache-note').textContent = msg.text;
      else if (msg.type === 'cache-list') showList(msg.models);
      else if (msg.type === 'progress' || msg.type === 'loaded' || msg.type === 'done') {
        const bytes = msg.wasm ?? msg.info?.wasm_bytes ?? msg.stats?.wasm_bytes;
        if (bytes) {
          el('wasm-memory').textContent = `WebAssembly memory: ${mb(bytes)}`;
          el('wasm-memory').dataset.bytes = String(bytes);
        }
        if (msg.type === 'loaded') worker.postMessage({ type: 'cache-list' });
        return false;
      } else return false;
      return true;
    },
  };
}
