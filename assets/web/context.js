// What the model reads, assembled from the writer's story: Memory first, then the World Info
// entries whose keys appear near the end of the story, then the story with the Author's Note
// inserted a number of tokens before its end. When it all outgrows the context, the oldest
// story text is dropped (Memory and the notes stay). One module, no DOM, so node can test it.
//
// `tok` is the engine's tokenizer: { encode(text) -> ids without BOS, decode(ids) -> text }
// (both may be async). Token counts and depths are the engine's own.

export const NOTE_TEMPLATE = (note) => `\n[Author's note: ${note}]\n`;

// The index in `text` where its last `n` tokens (of `ids`, text's own ids) begin. Decoding a
// suffix of the ids gives the text's suffix, except that some tokenizers drop the space a
// word piece carries; then the space stays with the earlier text.
export async function suffixStart(text, ids, n, tok) {
  if (n <= 0) return text.length;
  if (n >= ids.length) return 0;
  const tail = await tok.decode(ids.slice(ids.length - n));
  if (text.endsWith(tail)) return text.length - tail.length;
  const trimmed = tail.replace(/^\s+/, '');
  if (trimmed && text.endsWith(trimmed)) return text.length - trimmed.length;
  // Normalisation changed the text: cut in proportion (never in the middle of a surrogate pair).
  let at = Math.round(text.length * (1 - n / ids.length));
  if (at > 0 && at < text.length && /[\uDC00-\uDFFF]/.test(text[at])) at -= 1;
  return at;
}

// Entries (keys: strings, content: text) whose key (case-insensitive) appears in `recent`.
export function activeEntries(worldInfo, recent) {
  const hay = recent.toLowerCase();
  return worldInfo.filter((e) => e.content.trim() && e.keys.some((k) => k.trim() && hay.includes(k.trim().toLowerCase())));
}

// Assembles the context. `s`: { story, memory, note, noteDepth (tokens), worldInfo:
// [{keys, content}], scan (tokens of story end searched for keys), budget (most tokens the
// context may hold for the prompt) }. Returns { parts: [{ kind: 'memory'|'world'|'story'|
// 'note', text, tokens, key? }], text, tokens, dropped (story characters left out) }.
export async function assemble(s, tok) {
  const count = async (text) => (text ? (await tok.encode(text)).length : 0);
  const storyIds = await tok.encode(s.story);
  const recent = s.story.slice(await suffixStart(s.story, storyIds, s.scan, tok));
  const head = [];
  if (s.memory.trim()) head.push({ kind: 'memory', text: s.memory.replace(/\n*$/, '\n') });
  for (const e of activeEntries(s.worldInfo, recent)) head.push({ kind: 'world', text: e.content.replace(/\n*$/, '\n'), key: e.keys.join(', ') });
  const note = s.note.trim() ? { kind: 'note', text: NOTE_TEMPLATE(s.note.trim()) } : null;
  for (const p of head) p.tokens = await count(p.text);
  if (note) note.tokens = await count(note.text);

  // Context shift: the story keeps its newest tokens that fit beside the fixed parts.
  const fixed = head.reduce((n, p) => n + p.tokens, 0) + (note ? note.tokens : 0);
  const room = Math.max(1, s.budget - fixed);
  let start = 0;
  if (storyIds.length > room) start = await suffixStart(s.story, storyIds, room, tok);
  const story = s.story.slice(start);
  const ids = start ? await tok.encode(story) : storyIds;

  const parts = [...head];
  if (note) {
    const cut = await suffixStart(story, ids, s.noteDepth, tok);
    if (cut > 0) parts.push({ kind: 'story', text: story.slice(0, cut) });
    parts.push(note);
    if (cut < story.length) parts.push({ kind: 'story', text: story.slice(cut) });
  } else if (story) {
    parts.push({ kind: 'story', text: story });
  }
  for (const p of parts) if (p.tokens === undefined) p.tokens = await count(p.text);
  const text = parts.map((p) => p.text).join('');
  return { parts, text, tokens: parts.reduce((n, p) => n + p.tokens, 0), dropped: start };
}

// The same parts as chat turns: Memory, World Info and the note are the system turn, the
// story (the writer's instruction) the user's.
export function chatTurns(assembled) {
  const system = assembled.parts.filter((p) => p.kind !== 'story').map((p) => p.text.trim()).join('\n');
  const user = assembled.parts.filter((p) => p.kind === 'story').map((p) => p.text).join('');
  return { system, user };
}

// KoboldAI's story JSON (the fields Kobold Lite and KoboldAI United read and write).
export function toKobold(st) {
  const [prompt = '', ...actions] = st.segments.length ? st.segments : [''];
  return {
    gamestarted: true,
    prompt,
    memory: st.memory,
    authorsnote: st.note,
    anotetemplate: "[Author's note: <|>]",
    actions,
    worldinfo: st.worldInfo.map((e) => ({ key: e.keys.join(','), keysecondary: '', content: e.content, comment: '', folder: null, selective: false, constant: false })),
    wifolders_d: {},
    wifolders_l: [],
  };
}

// A KoboldAI story JSON as { text, memory, note, worldInfo }; throws naming the bad field.
export function fromKobold(j) {
  if (!j || typeof j !== 'object') throw new Error('a KoboldAI story is a JSON object');
  const str = (v, field) => {
    if (v === undefined || v === null) return '';
    if (typeof v !== 'string') throw new Error(`${field}: expected text`);
    return v;
  };
  const actions = j.actions === undefined ? [] : j.actions;
  if (!Array.isArray(actions)) throw new Error('actions: expected a list of texts');
  const wi = j.worldinfo === undefined ? [] : j.worldinfo;
  if (!Array.isArray(wi)) throw new Error('worldinfo: expected a list of entries');
  return {
    text: str(j.prompt, 'prompt') + actions.map((a, i) => str(a, `actions[${i}]`)).join(''),
    memory: str(j.memory, 'memory'),
    note: str(j.authorsnote, 'authorsnote'),
    worldInfo: wi.map((e, i) => ({ keys: str(e && e.key, `worldinfo[${i}].key`).split(',').map((k) => k.trim()).filter(Boolean), content: str(e && e.content, `worldinfo[${i}].content`) })),
  };
}
