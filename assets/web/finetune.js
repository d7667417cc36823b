// The page's fine-tune panel: trains a LoRA adapter on pasted text (or the story) on the
// loaded model, in the worker (Quill.finetune_lora), showing the loss of every step as it
// falls; keeps each trained adapter in this browser (IndexedDB, as the stories), listed with
// its base model, steps and final loss; and lets the writer write with one (the model is
// loaded again with the adapter merged into its weights, as `quill write --lora` does).
// app.js mounts it in the in-browser engine only (quill serve has no training route) and
// routes the worker's train-step, trained and finetune errors here.
//
// The trainer reads a Hugging Face safetensors folder (config.json + one model.safetensors:
// llama-tiny here); for any other model the panel says why it cannot train on it.

const DB = 'quill-adapters';
const STORE = 'adapters';

function idb() {
  return new Promise((ok, fail) => {
    const r = indexedDB.open(DB, 1);
    r.onupgradeneeded = () => r.result.createObjectStore(STORE, { keyPath: 'name' });
    r.onsuccess = () => ok(r.result);
    r.onerror = () => fail(r.error);
  });
}

async function idbDo(mode, f) {
  const db = await idb();
  return new Promise((ok, fail) => {
    const t = db.transaction(STORE, mode);
    const r = f(t.objectStore(STORE));
    t.oncomplete = () => ok(r.result);
    t.onerror = () => fail(t.error);
    t.onabort = () => fail(t.error || new Error('the browser aborted the write'));
  });
}

const kb = (n) => `${(n / 1e3).toFixed(0)} kB`;
const fmt = (loss) => (Number.isFinite(loss) ? loss.toFixed(3) : String(loss));

// Why the trainer cannot take the model `info` loaded from `source`, or '' when it can.
function refusal(info, source) {
  if (!info) return 'Load a model first: the fine-tune trains on the loaded model.';
  if (!source || !['hf-url', 'hf-files', 'cached'].includes(source.kind) || (source.kind === 'cached' && source.model.endsWith('.gguf'))) {
    return `${info.source} is a GGUF file: the browser's trainer reads a Hugging Face safetensors folder (config.json and model.safetensors, such as llama-tiny). Load one of those to fine-tune.`;
  }
  return '';
}

export function attachFinetune(worker, { storyText, setBusy, isBusy, reload }) {
  const section = document.createElement('section');
  section.id = 'finetune-section';
  section.innerHTML = `
    <h2>Fine-tune</h2>
    <p class="status">Trains a LoRA adapter on your own text, on your GPU, so the model writes more like it. The adapter stays in this browser.</p>
    <p id="ft-model" class="status">Load a model first: the fine-tune trains on the loaded model.</p>
    <label>Text to learn from <small>(blank: the story)</small>
      <textarea id="ft-text" rows="5" placeholder="Paste a few pages of your own writing here"></textarea>
    </label>
    <div class="row">
      <button id="ft-use-story" type="button">Use the story</button>
      <label>Adapter name <input type="text" id="ft-name" value="my voice" size="16" maxlength="64"></label>
    </div>
    <div class="grid">
      <label>Steps <input type="number" id="ft-steps" value="50" min="1" max="100000"></label>
      <label>Rank <input type="number" id="ft-rank" value="8" min="1" max="256"></label>
      <label>Learning rate <input type="number" id="ft-lr" value="0.001" step="0.0001" min="0"></label>
      <label>Sequence length (tokens) <input type="number" id="ft-seq" value="64" min="2" max="4096"></label>
      <label>Sequences per step <input type="number" id="ft-batch" value="2" min="1" max="64"></label>
    </div>
    <div class="row">
      <button id="ft-train" type="button" disabled>Train</button>
      <button id="ft-stop" type="button" disabled>Stop</button>
      <span id="ft-status" class="status" aria-live="polite"></span>
    </div>
    <svg id="ft-plot" viewBox="0 0 400 120" width="400" height="120" role="img" aria-label="Training loss per step" hidden></svg>
    <p id="ft-adapters-summary" class="status">Adapters kept in this browser: none.</p>
    <table id="ft-adapters"></table>`;
  (document.getElementById('studio') || document.body.lastElementChild).after(section);
  const el = (id) => section.querySelector(`#${id}`);
  let info = null, source = null, applied = null, training = null;

  const say = (id, text, error = false) => {
    el(id).textContent = text;
    el(id).classList.toggle('error', error);
  };

  const update = () => {
    const why = refusal(info, source);
    say('ft-model', why || `Trains on ${info.source}${applied ? ` (the base weights, not the adapter “${applied}” merged now)` : ''}.`, !!why && !!info);
    el('ft-train').disabled = !!why || !!training || isBusy();
    el('ft-stop').disabled = !training;
    for (const b of section.querySelectorAll('button.ft-apply')) b.disabled = !!training || isBusy() || !info || b.dataset.base !== info.source;
  };

  // The plot of `losses` (one circle per step, each with its step and loss).
  const plot = (losses, total) => {
    const svg = el('ft-plot');
    svg.toggleAttribute('hidden', !losses.length); // an SVG element has no `hidden` property
    const finite = losses.filter(Number.isFinite);
    const lo = Math.min(...finite), hi = Math.max(...finite);
    const x = (i) => 30 + 360 * (total > 1 ? i / (total - 1) : 0);
    const y = (l) => 10 + 90 * (hi > lo ? (hi - l) / (hi - lo) : 0.5);
    const points = losses.map((l, i) => `${x(i).toFixed(1)},${y(l).toFixed(1)}`).join(' ');
    svg.innerHTML = `<text x="2" y="14" font-size="10">${fmt(hi)}</text><text x="2" y="104" font-size="10">${fmt(lo)}</text>
      <text x="30" y="117" font-size="10">step 1</text><text x="390" y="117" font-size="10" text-anchor="end">step ${total}</text>
      <polyline fill="none" stroke="#4a6fa5" stroke-width="1.5" points="${points}"></polyline>`;
    losses.forEach((l, i) => {
      const c = document.createElementNS('http://www.w3.org/2000/svg', 'circle');
      c.setAttribute('cx', x(i).toFixed(1));
      c.setAttribute('cy', y(l).toFixed(1));
      c.setAttribute('r', '2.5');
      c.setAttribute('fill', '#4a6fa5');
      c.classList.add('ft-point');
      c.dataset.step = String(i + 1);
      c.dataset.loss = String(l);
      c.innerHTML = `<title>step ${i + 1}: loss ${fmt(l)}</title>`;
      svg.append(c);
    });
  };

  const showList = async () => {
    let all;
    try {
      all = await idbDo('readonly', (s) => s.getAll());
    } catch (e) {
      say('ft-adapters-summary', `The adapters kept in this browser cannot be read: ${e.message}`, true);
      return;
    }
    const table = el('ft-adapters');
    table.innerHTML = '';
    say('ft-adapters-summary', all.length ? `Adapters kept in this browser: ${all.length}.` : 'Adapters kept in this browser: none.');
    for (const a of all) {
      const row = table.insertRow();
      row.className = 'ft-adapter';
      row.dataset.name = a.name;
      row.insertCell().textContent = `${a.name}${a.name === applied ? ' (writing with it now)' : ''}`;
      row.insertCell().textContent = a.base;
      row.insertCell().textContent = `${a.steps} steps${a.cancelled ? ' (stopped early)' : ''}, rank ${a.rank}, final loss ${fmt(a.final_loss)}`;
      row.insertCell().textContent = kb(a.adapter_model.byteLength);
      const actions = row.insertCell();
      const apply = document.createElement('button');
      apply.type = 'button';
      apply.className = 'ft-apply';
      apply.dataset.base = a.base;
      apply.textContent = a.name === applied ? 'Write without it' : 'Write with it';
      apply.title = `Loads ${a.base} again with this adapter merged into its weights`;
      apply.onclick = () => {
        const use = a.name === applied ? null : { name: a.name, config: a.adapter_config, weights: a.adapter_model };
        reload(use);
      };
      const remove = document.createElement('button');
      remove.type = 'button';
      remove.className = 'ft-remove';
      remove.textContent = 'Delete';
      remove.onclick = async () => {
        await idbDo('readwrite', (s) => s.delete(a.name)).catch((e) => say('ft-status', `Not deleted: ${e.message}`, true));
        showList();
      };
      actions.append(apply, remove);
    }
    update();
  };

  const num = (id, int) => {
    const v = (int ? parseInt : parseFloat)(el(id).value, 10);
    const label = el(id).parentElement.firstChild.textContent.trim();
    if (!Number.isFinite(v) || v <= 0) throw new Error(`${label}: ${JSON.stringify(el(id).value)} is not a positive number`);
    return v;
  };

  const train = () => {
    let options;
    try {
      options = { steps: num('ft-steps', true), rank: num('ft-rank', true), lr: num('ft-lr', false), seq_len: num('ft-seq', true), batch: num('ft-batch', true) };
      if (!el('ft-name').value.trim()) throw new Error('Adapter name: give the adapter a name');
    } catch (e) {
      say('ft-status', e.message, true);
      return;
    }
    let text = el('ft-text').value;
    const fromStory = !text.trim();
    if (fromStory) text = storyText();
    if (!text.trim()) {
      say('ft-status', 'There is no text to learn from: paste some, or write a story first.', true);
      return;
    }
    training = { name: el('ft-name').value.trim(), options, losses: [], base: info.source };
    section.dataset.state = 'training';
    plot([], options.steps);
    say('ft-status', `Reading ${fromStory ? 'the story' : 'the text'}…`);
    setBusy(true);
    update();
    worker.postMessage({ type: 'finetune', text, options: { ...options, base: info.source } });
  };

  const ended = () => {
    training = null;
    setBusy(false);
    update();
  };

  const trained = async ({ losses, cancelled, config, weights }) => {
    const t = training;
    plot(losses, t.options.steps);
    const last = losses[losses.length - 1];
    const record = {
      name: t.name, base: t.base, steps: losses.length, rank: t.options.rank, lr: t.options.lr, seq_len: t.options.seq_len, batch: t.options.batch,
      losses, final_loss: last, cancelled, created: new Date().toISOString(), adapter_config: config, adapter_model: weights,
    };
    const did = `${cancelled ? 'Stopped' : 'Trained'} after ${losses.length} steps: loss ${fmt(losses[0])} → ${fmt(last)}`;
    try {
      await idbDo('readwrite', (s) => s.put(record));
      say('ft-status', `${did}. Kept in this browser as “${t.name}”.`);
    } catch (e) {
      say('ft-status', `${did}, but the adapter could not be kept: ${e.message}`, true);
    }
    section.dataset.state = 'done';
    ended();
    showList();
  };

  el('ft-use-story').onclick = () => { el('ft-text').value = storyText(); };
  el('ft-train').onclick = train;
  el('ft-stop').onclick = () => {
    worker.postMessage({ type: 'cancel' });
    el('ft-stop').disabled = true;
    say('ft-status', 'Stopping after this step…');
  };
  showList();

  return {
    // A model loaded (from `source`, with the adapter `adapter` merged, or none).
    loaded(modelInfo, modelSource, adapter) {
      info = modelInfo;
      source = modelSource;
      applied = adapter || null;
      showList();
    },
    // The page's busy state changed (loading, writing).
    update,
    // Messages of the worker that are the panel's; true when handled.
    handle(msg) {
      if (msg.type === 'train-step' && training) {
        training.losses.push(msg.loss);
        plot(training.losses, training.options.steps);
        say('ft-status', `Step ${msg.step} of ${training.options.steps}: loss ${fmt(msg.loss)}`);
      } else if (msg.type === 'trained' && training) {
        trained(msg);
      } else if (msg.type === 'error' && msg.during === 'finetune') {
        say('ft-status', `Cannot fine-tune: ${msg.message}`, true);
        section.dataset.state = 'error';
        ended();
      } else return false;
      return true;
    },
  };
}
