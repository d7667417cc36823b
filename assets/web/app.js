// The studio page. It runs against one of two engines, found at start: `quill serve` when
// GET health answers on this origin (the server serves this page at /), else quill in this
// browser (WebAssembly + WebGPU in worker.js, which owns all GPU work so the page stays
// responsive). The story is the prompt: context.js assembles what the model reads from it,
// Memory, the Author's Note and World Info; generated tokens are spans carrying their
// probability and alternatives. Everything autosaves: to the server's story folder, or to
// IndexedDB in the browser.
import { assemble, chatTurns, toKobold, fromKobold } from './context.js';
import { attachLoader } from './loader.js';
import { attachFinetune } from './finetune.js';

const $ = (id) => document.getElementById(id);
const ui = {
  gpu: $('gpu'), served: $('served'), loadServed: $('load-served'), ggufFile: $('gguf-file'), hfDir: $('hf-dir'),
  url: $('url'), loadUrl: $('load-url'), progress: $('progress'), modelStatus: $('model-status'), modelSection: $('model-section'),
  engine: $('engine'), key: $('api-key'), keyLabel: $('api-key-label'), story: $('story'), name: $('story-name'), mode: $('mode'), saved: $('saved'),
  cont: $('continue'), stop: $('stop'), retry: $('retry'), undo: $('undo'), redo: $('redo'), draftsButton: $('drafts-button'),
  draftCount: $('draft-count'), speed: $('speed'), summary: $('summary'), drafts: $('drafts'), alts: $('alts'),
  altsTitle: $('alts-title'), altsList: $('alts-list'), profile: $('profile'), profileTable: $('profile-table'),
  memory: $('memory'), note: $('note'), noteDepth: $('note-depth'), wiEntries: $('wi-entries'), wiAdd: $('wi-add'), wiScan: $('wi-scan'),
  context: $('context'), contextCount: $('context-count'), samplerNote: $('sampler-note'),
  exportButton: $('export'), importFile: $('import'),
};

const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;

function say(el, text, error = false) {
  el.textContent = text;
  el.classList.toggle('error', error);
}

// ---------------------------------------------------------------- the engines

// The in-browser engine: requests to the worker, answered by id.
function browserEngine(worker) {
  let next = 0;
  const waiting = new Map();
  const ask = (type, data) => new Promise((ok, fail) => {
    const id = ++next;
    waiting.set(id, { ok, fail });
    worker.postMessage({ type, id, ...data });
  });
  let run = null;
  return {
    kind: 'browser',
    answer(data) {
      const w = waiting.get(data.id);
      if (!w) return false;
      waiting.delete(data.id);
      if (data.type === 'error') w.fail(new Error(data.message)); else w.ok(data);
      return true;
    },
    async encode(text) { return (await ask('tokenize', { text })).ids; },
    async decode(ids) { return (await ask('detokenize', { ids })).text; },
    // Calls onToken(draft, text, logprob, alts) per token; resolves to the summary.
    write(options, onToken) {
      return new Promise((ok, fail) => {
        run = { ok, fail, onToken };
        worker.postMessage(options.profile ? { type: 'generate', options: plainOptions(options) } : { type: 'drafts', options });
      });
    },
    event(data) {
      if (!run) return;
      if (data.type === 'token') run.onToken(data.draft, data.text, data.logprob, data.alts);
      else if (data.type === 'piece') run.onToken(0, data.text, NaN, []);
      else if (data.type === 'drafted' || data.type === 'done') { run.ok(data.summary || data.stats); run = null; }
      else if (data.type === 'error') { run.fail(new Error(data.message)); run = null; }
    },
    cancel() { worker.postMessage({ type: 'cancel' }); },
  };
}

// `generate`'s options (the profiled path: one text, no alternatives).
function plainOptions(o) {
  const { n, probs, context_shift: _, ...rest } = o;
  return rest;
}

// `quill serve` on this origin: the OpenAI routes, streamed.
function serverEngine(modelName) {
  let abort = null;
  const post = async (path, body, signal) => {
    const r = await fetch(path, { method: 'POST', headers: { 'content-type': 'application/json', ...auth() }, body: JSON.stringify(body), signal });
    if (!r.ok) throw new Error(`${path}: ${(await r.json().catch(() => ({}))).error?.message || `HTTP ${r.status}`}`);
    return r;
  };
  return {
    kind: 'server',
    modelName,
    async encode(text) { return (await (await post('tokenize', { content: text })).json()).tokens; },
    async decode(ids) { return (await (await post('detokenize', { tokens: ids })).json()).content; },
    async write(o, onToken) {
      abort = new AbortController();
      const common = { n: o.n, max_tokens: o.max_tokens, stream: true, seed: o.seed, temperature: o.temperature, top_p: o.top_p, top_k: o.top_k,
        min_p: o.min_p, repeat_penalty: o.repeat_penalty, ignore_eos: o.ignore_eos || undefined,
        ...Object.fromEntries(WRITER_SAMPLERS.map((k) => [k, o[k]])) };
      const chat = o.chat;
      const body = chat
        ? { ...common, messages: [...(o.system ? [{ role: 'system', content: o.system }] : []), { role: 'user', content: o.prompt }], logprobs: o.probs > 0, top_logprobs: o.probs > 0 ? o.probs : undefined }
        : { ...common, prompt: o.prompt, logprobs: o.probs > 0 ? o.probs : undefined };
      const started = performance.now();
      const r = await post(chat ? 'v1/chat/completions' : 'v1/completions', body, abort.signal);
      let finish = 'cancelled', tokens = 0;
      try {
        for await (const event of sse(r.body)) {
          if (event.error) throw new Error(event.error.message);
          for (const c of event.choices || []) {
            const text = chat ? c.delta?.content : c.text;
            const lp = logprobsOf(c.logprobs, chat);
            if (lp.length) {
              // One token per chunk (the server sends each as it is generated).
              lp.forEach((t, i) => onToken(c.index, i === lp.length - 1 ? text || '' : '', t.logprob, t.alts));
              tokens += lp.length;
            } else if (text) {
              onToken(c.index, text, NaN, []);
              tokens += 1;
            }
            if (c.finish_reason) finish = c.finish_reason;
          }
        }
      } catch (e) {
        if (e.name !== 'AbortError') throw e;
      }
      const secs = (performance.now() - started) / 1000;
      return { stop: finish, generated: tokens, decode_tok_s: tokens / Math.max(secs, 1e-3), sampling: `seed ${o.seed}, written by quill serve` };
    },
    cancel() { if (abort) abort.abort(); },
  };
}

// Server-sent events of a fetch body, each parsed as JSON ([DONE] ends them).
async function* sse(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let at;
    while ((at = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, at);
      buf = buf.slice(at + 2);
      const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('');
      if (data === '[DONE]') return;
      if (data) yield JSON.parse(data);
    }
  }
}

// [{logprob, alts: [[text, logprob]], most likely first}] from a choice's logprobs, in either
// endpoint's shape (a completion's top_logprobs is an object: its order means nothing).
function logprobsOf(lp, chat) {
  if (!lp) return [];
  const sorted = (alts) => alts.sort((a, b) => b[1] - a[1]);
  if (chat) return (lp.content || []).map((t) => ({ logprob: t.logprob, alts: sorted((t.top_logprobs || []).map((a) => [a.token, a.logprob])) }));
  return (lp.token_logprobs || []).map((l, i) => ({ logprob: l, alts: sorted(Object.entries(lp.top_logprobs?.[i] || {})) }));
}

let engine = null;
let model = null;

// `Authorization` for a server with an API key (kept for this tab only).
const auth = () => {
  const key = sessionStorage.getItem('quill-api-key');
  return key ? { authorization: `Bearer ${key}` } : {};
};
let busy = false;

// The engine's tokenizer without the BOS it puts in front (the ids of "" are that overhead).
const tok = {
  overhead: null,
  async encode(text) {
    if (this.overhead === null) this.overhead = (await engine.encode('')).length;
    const ids = await engine.encode(text);
    return ids.slice(Math.min(this.overhead, ids.length));
  },
  decode(ids) { return engine.decode(ids); },
};

// ---------------------------------------------------------------- the story

// The story as pieces: { t } typed text, or { t, lp, alts, g } a generated token (g numbers
// the generation it came from). The editor's DOM is the truth; these are read from it.
function pieces() {
  const out = [];
  for (const n of ui.story.childNodes) {
    if (n.nodeType === Node.TEXT_NODE) push(out, { t: n.textContent });
    else if (n.nodeName === 'BR') push(out, { t: '\n' });
    else if (n.classList?.contains('tok') && n.textContent === n.dataset.t) {
      out.push({ t: n.dataset.t, lp: Number(n.dataset.lp), alts: JSON.parse(n.dataset.alts || '[]'), g: Number(n.dataset.g) });
    } else push(out, { t: n.textContent });
  }
  return out;
}

function push(list, p) {
  const last = list[list.length - 1];
  if (last && last.lp === undefined && p.lp === undefined) last.t += p.t;
  else if (p.t) list.push(p);
}

const storyText = () => pieces().map((p) => p.t).join('');

function tokenSpan(p) {
  const s = document.createElement('span');
  s.className = 'tok';
  s.textContent = p.t;
  s.dataset.t = p.t;
  s.dataset.lp = String(p.lp);
  s.dataset.alts = JSON.stringify(p.alts || []);
  s.dataset.g = String(p.g);
  if (Number.isFinite(p.lp)) {
    const prob = Math.exp(p.lp);
    // Sure tokens plain, doubtful ones warmer: the tint is the probability.
    s.style.backgroundColor = `hsla(${Math.round(120 * prob)}, 85%, 60%, ${(0.45 * (1 - prob) + 0.08).toFixed(2)})`;
    s.title = `${(100 * prob).toFixed(1)}%`;
  }
  return s;
}

function render(list) {
  ui.story.replaceChildren(...list.map((p) => (p.lp === undefined ? document.createTextNode(p.t) : tokenSpan(p))));
}

// A token span the writer typed into is a token no more.
function unwrapEdited() {
  for (const s of ui.story.querySelectorAll('span.tok')) if (s.textContent !== s.dataset.t) s.replaceWith(document.createTextNode(s.textContent));
}

// Segments for KoboldAI's prompt and actions: runs of typed text and of one generation.
function segments(list) {
  const out = [];
  let key = null;
  for (const p of list) {
    const k = p.lp === undefined ? 'typed' : `g${p.g}`;
    if (k === key) out[out.length - 1] += p.t; else out.push(p.t);
    key = k;
  }
  return out;
}

// ---------------------------------------------------------------- history

const history = { states: [], at: -1, generations: 0 };

// A story's pieces without their alternatives (history steps are saved so).
const bare = (list) => list.map(({ alts, ...p }) => p);
// By value, not by key order (a story saved through the server comes back with its keys sorted).
const same = (a, b) => JSON.stringify(a.map((p) => [p.t, p.lp, p.g])) === JSON.stringify(b.map((p) => [p.t, p.lp, p.g]));

// Records the story as a step of the history (dropping what Redo could have reached).
function record() {
  const now = pieces();
  if (history.at >= 0 && same(history.states[history.at], now)) return;
  history.states.splice(history.at + 1);
  history.states.push(now);
  if (history.states.length > 200) history.states.shift();
  history.at = history.states.length - 1;
  updateButtons();
}

function walk(step) {
  record();
  const to = history.at + step;
  if (to < 0 || to >= history.states.length) return;
  history.at = to;
  render(history.states[to]);
  lastGeneration = null;
  changed();
  updateButtons();
}

let typingTimer = 0;
function typed() {
  unwrapEdited();
  clearTimeout(typingTimer);
  typingTimer = setTimeout(record, 700);
  changed();
}

// ---------------------------------------------------------------- notes and world info

function worldInfo() {
  return [...ui.wiEntries.querySelectorAll('.wi')].map((e) => ({
    keys: e.querySelector('.wi-keys').value.split(',').map((k) => k.trim()).filter(Boolean),
    content: e.querySelector('.wi-content').value,
  }));
}

function addEntry(entry = { keys: [], content: '' }) {
  const n = ui.wiEntries.children.length + 1;
  const box = document.createElement('div');
  box.className = 'wi';
  box.innerHTML = `<label>Keys (comma-separated) <input type="text" class="wi-keys"></label>
    <label>Entry <span class="count"></span><textarea class="wi-content" rows="2"></textarea></label>
    <button type="button" class="wi-remove">Remove entry</button>`;
  box.querySelector('.wi-keys').value = entry.keys.join(', ');
  box.querySelector('.wi-keys').setAttribute('aria-label', `World Info entry ${n}: keys`);
  box.querySelector('.wi-content').value = entry.content;
  box.querySelector('.wi-remove').onclick = () => { box.remove(); changed(); };
  box.oninput = changed;
  ui.wiEntries.append(box);
  return box;
}

// ---------------------------------------------------------------- context

const num = (id, int = false) => {
  const v = $(id).value.trim();
  return v === '' ? undefined : (int ? parseInt(v, 10) : parseFloat(v));
};

function settings() {
  return {
    memory: ui.memory.value, note: ui.note.value, noteDepth: num('note-depth', true) ?? 3, scan: num('wi-scan', true) ?? 64,
    worldInfo: worldInfo(),
  };
}

async function assembled() {
  const maxTokens = num('max_tokens', true) || 80;
  // The browser engine's session holds at most 2048 positions (web.rs MAX_CTX).
  const budget = Math.min(model?.context ?? 2048, 2048) - maxTokens - 4;
  return assemble({ story: storyText(), ...settings(), budget }, tok);
}

// Shows the context with each part marked, and the token counts beside each field.
async function showContext(a) {
  ui.context.replaceChildren(...a.parts.map((p) => {
    const m = document.createElement('mark');
    m.className = `part ${p.kind}`;
    m.dataset.part = p.kind;
    m.dataset.tokens = String(p.tokens);
    m.title = `${{ memory: 'Memory', world: `World Info (${p.key})`, story: 'Story', note: "Author's Note" }[p.kind]}: ${p.tokens} tokens`;
    m.textContent = p.text;
    return m;
  }));
  ui.contextCount.textContent = `(${a.tokens} tokens${a.dropped ? `; the oldest ${a.dropped} characters of the story no longer fit` : ''})`;
  const counts = async (text) => (text.trim() ? `${(await tok.encode(text)).length} tokens` : '');
  $('memory-count').textContent = await counts(ui.memory.value);
  $('note-count').textContent = await counts(ui.note.value);
  for (const e of ui.wiEntries.querySelectorAll('.wi')) e.querySelector('.count').textContent = await counts(e.querySelector('.wi-content').value);
}

let contextTimer = 0;
function changed() {
  scheduleSave();
  clearTimeout(contextTimer);
  contextTimer = setTimeout(() => { if (model && !busy) assembled().then(showContext).catch(() => {}); }, 400);
}

// ---------------------------------------------------------------- writing

function samplerOptions() {
  const browser = engine.kind === 'browser';
  return {
    max_tokens: num('max_tokens', true),
    temperature: num('temperature'), top_k: num('top_k', true), top_p: num('top_p'), min_p: num('min_p'),
    repeat_penalty: num('repeat_penalty'), seed: num('seed', true), ignore_eos: $('ignore_eos').checked,
    probs: num('probs', true) ?? 0,
    dry_multiplier: num('dry_multiplier'), dry_base: num('dry_base'), dry_allowed_length: num('dry_allowed_length', true),
    dry_penalty_last_n: num('dry_penalty_last_n', true), dry_sequence_breakers: breakers(),
    xtc_threshold: num('xtc_threshold'), xtc_probability: num('xtc_probability'),
    typical_p: num('typical_p'), top_n_sigma: num('top_n_sigma'), dynatemp_range: num('dynatemp_range'), dynatemp_exponent: num('dynatemp_exponent'),
    mirostat: num('mirostat', true), mirostat_tau: num('mirostat_tau'), mirostat_eta: num('mirostat_eta'),
    ...(browser ? { profile: ui.profile.checked } : {}),
  };
}

// The samplers both engines take by llama-server's names (blank: llama.cpp's default).
const WRITER_SAMPLERS = ['dry_multiplier', 'dry_base', 'dry_allowed_length', 'dry_penalty_last_n', 'dry_sequence_breakers',
  'xtc_threshold', 'xtc_probability', 'typical_p', 'top_n_sigma', 'dynatemp_range', 'dynatemp_exponent', 'mirostat', 'mirostat_tau', 'mirostat_eta'];

// DRY's breakers: a JSON list of strings (blank: llama.cpp's \n : " *); anything else is an
// error the writer sees before a request goes out.
function breakers() {
  const v = $('dry_sequence_breakers').value.trim();
  if (!v) return undefined;
  let list;
  try { list = JSON.parse(v); } catch { list = null; }
  if (!Array.isArray(list) || !list.every((b) => typeof b === 'string')) throw new Error('DRY breakers: write a JSON list of strings, e.g. ["\\n", ":"]');
  return list;
}

async function request(n, seedShift = 0) {
  const a = await assembled();
  await showContext(a);
  const chat = ui.mode.value === 'chat';
  // The oldest story text no longer fits: the in-browser engine moves the KV cache of what
  // stays instead of reading it again (the server engine rereads it).
  const o = { ...samplerOptions(), n, chat, context_shift: a.dropped > 0 };
  if (o.seed === undefined) o.seed = Math.floor(Math.random() * 2 ** 31);
  o.seed += seedShift;
  if (chat) Object.assign(o, { prompt: chatTurns(a).user, system: chatTurns(a).system });
  else o.prompt = a.text;
  return o;
}

let lastGeneration = null;

function setBusy(b) {
  busy = b;
  for (const el of [ui.loadServed, ui.loadUrl, ui.ggufFile, ui.hfDir]) el.disabled = b || !adapterReady;
  ui.stop.disabled = !b;
  updateButtons();
  finetune?.update();
}

function updateButtons() {
  const ready = !!model && !busy;
  ui.cont.disabled = !ready;
  ui.draftsButton.disabled = !ready;
  ui.retry.disabled = !ready || !lastGeneration;
  ui.undo.disabled = busy || history.at <= 0 && same(history.states[0] || [], pieces());
  ui.redo.disabled = busy || history.at >= history.states.length - 1;
}

// Streams one continuation onto the end of the story. (Retry has put the story back as it
// was before the last generation; that is in the history already.)
async function continueStory(seedShift = 0, retrying = false) {
  if (!model || busy) return;
  if (!retrying) record();
  const before = pieces();
  hideAlts();
  ui.drafts.hidden = true;
  setBusy(true);
  delete ui.story.dataset.done;
  say(ui.summary, 'Reading the story…');
  ui.speed.textContent = '';
  const g = ++history.generations;
  let o;
  try {
    o = await request(1, seedShift);
    if (o.chat && !/\n$/.test(storyText())) ui.story.append(document.createTextNode('\n\n'));
    let pending = null, n = 0;
    const started = performance.now();
    const summary = await engine.write(o, (draft, text, lp, alts) => {
      // A token that ends inside a character comes with no text: its probability goes with the next.
      const p = pending ? { lp: Math.min(pending.lp, lp), alts: pending.alts } : { lp, alts };
      if (!text) { pending = p; return; }
      pending = null;
      ui.story.append(tokenSpan({ t: text, lp: p.lp, alts: p.alts, g }));
      n += 1;
      const secs = (performance.now() - started) / 1000;
      if (n > 1) ui.speed.textContent = `${n} tokens, ${(n / secs).toFixed(1)} tokens/s`;
      saveNow();
    });
    lastGeneration = { before, seedShift, g };
    finished(summary, n > 1 ? (n - 1) / ((performance.now() - started) / 1000) : 0);
  } catch (e) {
    say(ui.summary, `Error while writing: ${e.message}`, true);
  } finally {
    ui.story.dataset.done = 'true';
    setBusy(false);
    record();
    saveNow();
  }
}

// The summary line: tokens, speed (measured here, as the text arrived), why it stopped.
function finished(s, speed = 0) {
  const d = s.drafts?.[0];
  const stop = s.stop || d?.stop;
  const generated = s.generated ?? s.drafts?.reduce((n, x) => n + x.generated, 0);
  const rate = speed ? `, writing ${speed.toFixed(1)} tokens/s` : '';
  const reused = s.reused_tokens ?? d?.reused_tokens;
  const moved = s.shifted_tokens ? ` (${s.shifted_tokens} of them moved by a context shift)` : '';
  const cached = reused ? ` ${reused} tokens of the context came from the cache${moved}.` : '';
  say(ui.summary, `${generated} tokens${rate}; stopped: ${stop}.${cached} ${s.seed !== undefined ? `Seed ${s.seed}; ` : ''}${s.sampling || ''}.`);
  if (s.profile) {
    ui.profileTable.textContent = s.profile;
    ui.profileTable.hidden = false;
  }
}

// Retry: the story as it was before the last generation, written again with another seed.
async function retry() {
  if (!lastGeneration || busy) return;
  record();
  render(lastGeneration.before);
  await continueStory(lastGeneration.seedShift + 1, true);
}

// Drafts: n continuations side by side; keep one (appended to the story), edit it first,
// or ask for more.
let draftShift = 0;
async function writeDrafts(more = false) {
  if (!model || busy) return;
  const n = parseInt(ui.draftCount.value, 10);
  draftShift = more ? draftShift + n : 0;
  setBusy(true);
  hideAlts();
  say(ui.summary, `Writing ${n} drafts…`);
  const g = ++history.generations;
  const boxes = [];
  ui.drafts.replaceChildren();
  for (let i = 0; i < n; i++) {
    const card = document.createElement('article');
    card.className = 'draft';
    card.innerHTML = `<h3>Draft ${i + 1}</h3><div class="draft-text editor" contenteditable="plaintext-only" role="textbox" aria-multiline="true" aria-label="Draft ${i + 1}"></div><button type="button" class="keep">Keep this one</button>`;
    card.querySelector('.keep').onclick = () => keepDraft(card);
    card.querySelector('.draft-text').oninput = (e) => { for (const s of e.target.querySelectorAll('span.tok')) if (s.textContent !== s.dataset.t) s.replaceWith(document.createTextNode(s.textContent)); };
    boxes.push(card.querySelector('.draft-text'));
    ui.drafts.append(card);
  }
  const more_ = document.createElement('button');
  more_.type = 'button';
  more_.id = 'more-drafts';
  more_.textContent = 'More drafts';
  more_.onclick = () => writeDrafts(true);
  ui.drafts.append(more_);
  ui.drafts.hidden = false;
  delete ui.drafts.dataset.done;
  try {
    const o = await request(n, draftShift);
    const summary = await engine.write({ ...o, profile: false }, (draft, text, lp, alts) => {
      if (text && boxes[draft]) boxes[draft].append(tokenSpan({ t: text, lp, alts, g }));
    });
    finished(summary);
  } catch (e) {
    say(ui.summary, `Error while writing drafts: ${e.message}`, true);
  } finally {
    ui.drafts.dataset.done = 'true';
    setBusy(false);
  }
}

function keepDraft(card) {
  record();
  const box = card.querySelector('.draft-text');
  for (const n of [...box.childNodes]) ui.story.append(n.nodeType === Node.TEXT_NODE ? document.createTextNode(n.textContent) : n);
  ui.story.normalize();
  ui.drafts.hidden = true;
  ui.drafts.replaceChildren();
  record();
  changed();
}

// ---------------------------------------------------------------- the probability view

let altsFor = null;

function showAlts(span) {
  const alts = JSON.parse(span.dataset.alts || '[]');
  const lp = Number(span.dataset.lp);
  altsFor = span;
  for (const s of ui.story.querySelectorAll('span.tok.chosen')) s.classList.remove('chosen');
  span.classList.add('chosen');
  const pct = (l) => `${(100 * Math.exp(l)).toFixed(1)}%`;
  ui.altsTitle.textContent = Number.isFinite(lp) ? `“${span.dataset.t}” had ${pct(lp)}. Write from another token instead:` : `“${span.dataset.t}”: no probabilities were kept for this token.`;
  ui.altsList.replaceChildren(...alts.map(([t, l]) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'alt';
    b.setAttribute('role', 'listitem');
    b.dataset.t = t;
    b.textContent = `${JSON.stringify(t)} ${pct(l)}`;
    b.onclick = () => branch(span, t, l);
    return b;
  }));
  ui.alts.hidden = false;
}

function hideAlts() {
  ui.alts.hidden = true;
  altsFor = null;
  for (const s of ui.story.querySelectorAll('span.tok.chosen')) s.classList.remove('chosen');
}

// Cuts the story at `span`, puts the chosen token there and continues from it. Both engines
// reuse the KV cache of the unchanged prefix (the server's slot cache; the browser's drafts
// session within a call).
async function branch(span, text, lp) {
  if (busy) return;
  record();
  while (span.nextSibling) span.nextSibling.remove();
  span.replaceWith(tokenSpan({ t: text, lp, alts: JSON.parse(span.dataset.alts || '[]'), g: Number(span.dataset.g) }));
  hideAlts();
  record();
  await continueStory();
}

// ---------------------------------------------------------------- saving

const DB = 'quill-studio';
function idb() {
  return new Promise((ok, fail) => {
    const r = indexedDB.open(DB, 1);
    r.onupgradeneeded = () => r.result.createObjectStore('stories');
    r.onsuccess = () => ok(r.result);
    r.onerror = () => fail(r.error);
  });
}
async function idbDo(mode, f) {
  const db = await idb();
  return new Promise((ok, fail) => {
    const t = db.transaction('stories', mode);
    const r = f(t.objectStore('stories'));
    t.oncomplete = () => ok(r.result);
    t.onerror = () => fail(t.error);
  });
}

let serverStories = false;
// The story shown: saves go under its name, whatever the name field holds meanwhile.
let storyName = 'my story';
const typedName = () => ui.name.value.trim() || 'my story';
const storyUrl = () => `stories/${encodeURIComponent(storyName)}`;

// The sampler fields saved with a story (blank: the engine's default).
const SAMPLER_FIELDS = ['max_tokens', 'temperature', 'top_k', 'top_p', 'min_p', 'repeat_penalty', ...WRITER_SAMPLERS, 'seed', 'probs'];

// Tokens at the end of the story whose alternatives are saved with it.
const KEEP_ALTERNATIVES = 1000;

const textOf = (list) => list.map((p) => p.t).join('');
const count = (n, fallback) => (Number.isInteger(n) && n >= 0 ? n : fallback);

// The whole studio as one JSON document: quill's story file (src/story.rs, the file `quill
// write --story` reads and writes), with what only the page needs under `studio`.
function snapshot() {
  const list = pieces();
  const s = settings();
  // The last 20 steps of the history go with the story (Undo after a reload), without their
  // alternatives, and only the newest tokens keep theirs: a save stays small enough to make
  // after every token (and under the server's body limit).
  const kept = history.states.slice(-20).map(bare);
  const at = Math.max(0, history.at - (history.states.length - kept.length));
  const recent = list.length - KEEP_ALTERNATIVES;
  return {
    format: 'quill-story', version: 1, text: textOf(list),
    memory: s.memory, authors_note: s.note, authors_note_depth: count(s.noteDepth, 3), world_info: s.worldInfo, world_info_scan: count(s.scan, 64),
    // The story's own undo: the texts of the steps before the one shown.
    history: kept.slice(0, at).map(textOf),
    studio: {
      pieces: list.map((p, i) => (i < recent ? bare([p])[0] : p)),
      sampling: { ...Object.fromEntries(SAMPLER_FIELDS.map((id) => [id, $(id).value])), ignore_eos: $('ignore_eos').checked, drafts: ui.draftCount.value },
      mode: ui.mode.value, history: kept, history_at: at, saved: new Date().toISOString(),
    },
  };
}

// The page's tokens of a story as far as they still spell its text (the command line may
// have written on: the rest comes as typed text), else the text alone.
function piecesOf(list, text) {
  if (!Array.isArray(list)) return [{ t: text }];
  const spelt = textOf(list);
  if (spelt === text) return list;
  return text.startsWith(spelt) ? [...list, { t: text.slice(spelt.length) }] : [{ t: text }];
}

// A story file: quill's format (the page's extras under `studio`, absent in a story the
// command line started), or the page's older one (those extras at the top level).
function restore(j) {
  const st = j.studio && typeof j.studio === 'object' ? j.studio : j;
  render(piecesOf(st.pieces, String(j.text || '')));
  ui.memory.value = j.memory || '';
  ui.note.value = j.authors_note || '';
  ui.noteDepth.value = j.authors_note_depth ?? 3;
  ui.wiScan.value = j.world_info_scan ?? 64;
  ui.mode.value = st.mode === 'chat' ? 'chat' : 'story';
  const sampling = st.sampling && typeof st.sampling === 'object' ? st.sampling : {};
  for (const id of SAMPLER_FIELDS) if (typeof sampling[id] === 'string') $(id).value = sampling[id];
  $('ignore_eos').checked = sampling.ignore_eos === true;
  if (['2', '3', '4'].includes(sampling.drafts)) ui.draftCount.value = sampling.drafts;
  ui.wiEntries.replaceChildren();
  for (const e of j.world_info || []) addEntry(e);
  const steps = Array.isArray(st.history) && st.history.length && st.history.every(Array.isArray);
  // Without the page's steps, the story's texts before it (oldest first) lead to it.
  const texts = Array.isArray(j.history) ? j.history.filter((t) => typeof t === 'string').map((t) => [{ t }]) : [];
  history.states = steps ? st.history : [...texts, pieces()];
  history.at = Math.max(0, Math.min(history.states.length - 1, steps && Number.isInteger(st.history_at) ? st.history_at : history.states.length - 1));
  // The step shown is the story as saved, alternatives and all.
  if (same(history.states[history.at], pieces())) history.states[history.at] = pieces();
  history.generations = Math.max(0, ...history.states.flat().map((p) => p.g || 0), ...pieces().map((p) => p.g || 0));
}

let saving = false, dirty = false, saveTimer = 0, loaded = false, saveError = '';
const SAVE_RETRY_MS = 2000;

function scheduleSave() {
  clearTimeout(saveTimer);
  saveTimer = setTimeout(saveNow, 500);
}

// Saves now, or as soon as the save in flight is done (saves never overlap, and the last one
// always holds the latest text). Returns whether this call saved (false: it failed, and a retry
// is scheduled; or a save in flight takes the edit).
async function saveNow() {
  if (!loaded) return true;
  if (saving) { dirty = true; return false; }
  saving = true;
  try {
    do {
      dirty = false;
      const body = JSON.stringify(snapshot());
      if (serverStories) {
        const r = await fetch(storyUrl(), { method: 'PUT', headers: { 'content-type': 'application/json', ...auth() }, body });
        if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error?.message || `HTTP ${r.status}`);
      } else {
        await idbDo('readwrite', (s) => s.put(body, storyName));
      }
      say(ui.saved, `Saved ${serverStories ? 'on the server' : 'in this browser'} at ${new Date().toLocaleTimeString()}`);
    } while (dirty);
    return true;
  } catch (e) {
    // A failed save is tried again (with any edit made meanwhile) until one goes through:
    // the story stays in the page and is never dropped.
    saveError = e.message;
    say(ui.saved, `Not saved: ${e.message} (trying again in ${SAVE_RETRY_MS / 1000} s)`, true);
    console.error(`story not saved: ${e.message}`);
    clearTimeout(saveTimer);
    saveTimer = setTimeout(saveNow, SAVE_RETRY_MS);
    return false;
  } finally {
    saving = false;
  }
}

// The name field changed: the story shown is saved under its own name first (an edit made a
// moment before is not lost), then the named one opens. A change event that names the story
// already shown (the field losing focus) reopens nothing: that reload overwrote edits made
// since, such as Memory typed right after. If the story shown cannot be saved, the switch is
// refused: it stays in the page (its save is tried again) rather than being replaced unsaved.
async function openNamed() {
  const wanted = typedName();
  if (wanted === storyName) return;
  if (loaded) {
    clearTimeout(saveTimer);
    while (saving) await new Promise((ok) => setTimeout(ok, 50));
    if (!(await saveNow())) {
      ui.name.value = storyName;
      say(ui.saved, `Not switched to “${wanted}”: “${storyName}” could not be saved (${saveError}). It stays open and its save is tried again every ${SAVE_RETRY_MS / 1000} s; pick the other story once it is saved.`, true);
      return;
    }
  }
  loaded = false;
  await loadStory();
}

async function loadStory() {
  storyName = typedName();
  let text = null;
  if (serverStories) {
    // Only "no such story" starts a new one: a story the server could not give (an error, no
    // connection) is not replaced by an empty one on the next save.
    const r = await fetch(storyUrl(), { headers: auth() }).catch((e) => ({ ok: false, status: 0, statusText: e.message }));
    if (r.ok) text = await r.text();
    else if (r.status !== 404) {
      const why = r.status ? (await r.json().catch(() => ({}))).error?.message || `HTTP ${r.status}` : r.statusText;
      say(ui.saved, `Cannot open “${storyName}” from the server: ${why}. Nothing is saved until it opens (pick the story again).`, true);
      return;
    }
  } else {
    text = await idbDo('readonly', (s) => s.get(storyName)).catch(() => null);
  }
  if (text) {
    restore(JSON.parse(text));
    say(ui.saved, `Opened “${storyName}” from ${serverStories ? 'the server' : 'this browser'}`);
  } else {
    history.states = [pieces()];
    history.at = 0;
  }
  loaded = true;
  updateButtons();
  changed();
}

function exportKobold() {
  const blob = new Blob([JSON.stringify(toKobold({ segments: segments(pieces()), ...settings() }), null, 1)], { type: 'application/json' });
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = `${ui.name.value.trim() || 'story'}.json`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

async function importKobold(file) {
  try {
    const k = fromKobold(JSON.parse(await file.text()));
    record();
    render([{ t: k.text }]);
    ui.memory.value = k.memory;
    ui.note.value = k.note;
    ui.wiEntries.replaceChildren();
    for (const e of k.worldInfo) addEntry(e);
    record();
    changed();
    say(ui.saved, `Imported ${file.name}`);
  } catch (e) {
    say(ui.saved, `Cannot import ${file.name}: ${e.message}`, true);
  }
}

// ---------------------------------------------------------------- loading a model (browser engine)

let worker = null;
let loader = null;
let finetune = null;
let adapterReady = false;
// What the model shown was loaded from, and the fine-tuned adapter merged into it (the
// fine-tune panel loads it again with another).
let lastLoad = null;

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

function load(source, adapter = null) {
  model = null;
  lastLoad = { source, adapter };
  finetune.loaded(null, null, null);
  setBusy(true);
  ui.progress.hidden = false;
  ui.progress.value = 0;
  say(ui.modelStatus, 'Loading…');
  worker.postMessage({ type: 'load', source, options: { ...loader.options(), ...(adapter ? { adapter } : {}) } });
}

const handlers = {
  ready({ adapter: a, cached }) {
    adapterReady = true;
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
    tok.overhead = null;
    ui.progress.hidden = true;
    const lora = info.adapter ? ` The fine-tuned adapter “${info.adapter}” is merged into its weights.` : '';
    say(ui.modelStatus, `Loaded ${info.source}: ${info.architecture}, ${info.layers} layers, dim ${info.dim}, vocab ${info.vocab}, context ${info.context}; weights ${info.weights}, ${mb(info.weight_bytes)} on the GPU.${lora}`);
    finetune.loaded(info, lastLoad?.source, info.adapter);
    ui.mode.querySelector('[value=chat]').disabled = !info.has_chat_template;
    if (!info.has_chat_template) ui.mode.value = 'story';
    setBusy(false);
    changed();
  },
  error({ during, message }) {
    ui.progress.hidden = true;
    if (during === 'init') {
      say(ui.gpu, `quill cannot run here: ${message}`, true);
      return;
    }
    if (during !== 'load') return;
    const fit = /binding holds at most|the adapter allows|buffer .* needs|does not fit this GPU/.test(message);
    say(ui.modelStatus, fit ? `This model does not fit this GPU's limits: ${message}` : `Error while loading: ${message}`, true);
    finetune.loaded(null, null, null);
    setBusy(false);
  },
};

function startBrowser() {
  ui.modelSection.hidden = false;
  say(ui.engine, 'Engine: quill in this browser (WebGPU). Stories are saved in this browser (IndexedDB).');
  if (!('gpu' in navigator)) {
    say(ui.gpu, 'This browser has no WebGPU, which quill needs to run the model on your GPU. Use Chrome or Edge 113 or later (on Linux, start Chromium with --enable-unsafe-webgpu), or a Firefox or Safari version with WebGPU turned on.', true);
    return;
  }
  worker = new Worker('worker.js', { type: 'module' });
  loader = attachLoader(worker, { load });
  finetune = attachFinetune(worker, { storyText, setBusy, isBusy: () => busy, reload: (adapter) => lastLoad && load(lastLoad.source, adapter) });
  engine = browserEngine(worker);
  worker.onmessage = ({ data }) => {
    if (loader.handle(data) || finetune.handle(data)) return;
    if (data.id !== undefined && engine.answer(data)) return;
    if (['token', 'piece', 'drafted', 'done'].includes(data.type) || (data.type === 'error' && ['drafts', 'generate'].includes(data.during))) engine.event(data);
    if (handlers[data.type]) handlers[data.type](data);
  };
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
}

// `quill serve`: its model is loaded (or loading); the story folder may be there.
async function startServer() {
  ui.modelSection.hidden = true;
  ui.gpu.textContent = '';
  document.querySelector('header .tag').textContent = 'A language model writing on the GPU of the machine that runs quill serve.';
  for (const el of document.querySelectorAll('.browser-only')) el.disabled = true;
  for (;;) {
    const h = await fetch('health').then((r) => r.json()).catch(() => ({}));
    if (h.status === 'ok') break;
    say(ui.engine, `Engine: quill serve on ${location.host} — ${h.status || 'not answering'}…`);
    await new Promise((ok) => setTimeout(ok, 1000));
  }
  // A server with --api-key wants it on every API call: ask for it until it is accepted.
  while ((await fetch('v1/models', { headers: auth() })).status === 401) {
    ui.keyLabel.hidden = false;
    say(ui.engine, `Engine: quill serve on ${location.host} — it wants its API key (--api-key): type it below.`, true);
    await new Promise((ok) => { ui.key.onchange = ok; });
    sessionStorage.setItem('quill-api-key', ui.key.value.trim());
  }
  ui.keyLabel.hidden = true;
  const m = (await fetch('v1/models', { headers: auth() }).then((r) => r.json()).catch(() => ({}))).data?.[0] || {};
  serverStories = (await fetch('stories', { headers: auth() })).ok;
  engine = serverEngine(m.id);
  model = { context: m.context_length || 2048, source: m.id, has_chat_template: true };
  say(ui.engine, `Engine: quill serve on ${location.host}, model ${m.id} (context ${model.context}). ${serverStories ? 'Stories are saved in the server\'s story folder on every token.' : 'The server has no story folder (--stories DIR): stories are saved in this browser.'}`);
  setBusy(false);
}

// The server answers GET health; a static file server (scripts/web.sh) does not.
async function detect() {
  try {
    const r = await fetch('health');
    const j = await r.json();
    return typeof j.status === 'string';
  } catch (_) {
    return false;
  }
}

async function start() {
  ui.cont.onclick = () => continueStory();
  ui.stop.onclick = () => { engine && engine.cancel(); ui.stop.disabled = true; };
  ui.retry.onclick = retry;
  ui.undo.onclick = () => walk(-1);
  ui.redo.onclick = () => walk(1);
  ui.draftsButton.onclick = () => writeDrafts(false);
  ui.wiAdd.onclick = () => { addEntry().querySelector('.wi-keys').focus(); changed(); };
  ui.story.addEventListener('input', typed);
  ui.story.addEventListener('click', (e) => { const s = e.target.closest?.('span.tok'); if (s) showAlts(s); });
  // The keyboard's way to the alternatives: the token at the caret. Only after a key: a click
  // also moves the caret, to the nearest token boundary, which is often the end of the token
  // before the one clicked; that selectionchange, seen after the click, showed (and branched
  // from) the previous token's alternatives.
  let caretByKeys = false;
  ui.story.addEventListener('pointerdown', () => { caretByKeys = false; });
  ui.story.addEventListener('keydown', () => { caretByKeys = true; });
  document.addEventListener('selectionchange', () => {
    if (!caretByKeys) return;
    const n = document.getSelection()?.anchorNode;
    const s = n && (n.nodeType === Node.TEXT_NODE ? n.parentElement : n)?.closest?.('#story span.tok');
    if (s && s !== altsFor && !busy) showAlts(s);
  });
  ui.story.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); continueStory(); }
  });
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape' && busy) ui.stop.click(); });
  for (const el of [ui.memory, ui.note, ui.noteDepth, ui.wiScan, ui.mode]) el.addEventListener('input', changed);
  ui.name.onchange = () => openNamed();
  ui.exportButton.onclick = exportKobold;
  ui.importFile.onchange = () => ui.importFile.files[0] && importKobold(ui.importFile.files[0]);
  if (await detect()) await startServer(); else startBrowser();
  await loadStory();
}

start();
