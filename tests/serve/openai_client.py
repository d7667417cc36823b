"""The real `openai` Python client against a live `quill serve` (started by tests/serve.rs
with the llama-tiny fixture). Environment: QUILL_BASE_URL (…/v1), QUILL_API_KEY,
QUILL_REF_PROMPT (token ids) and QUILL_REF_TOP5 (the CPU reference log-softmax, top 5)."""

import json
import os
import sys

import openai

base = os.environ["QUILL_BASE_URL"]
key = os.environ["QUILL_API_KEY"]
ref_prompt = json.loads(os.environ["QUILL_REF_PROMPT"])
ref_top5 = json.loads(os.environ["QUILL_REF_TOP5"])
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)
# Sampling that leaves the model's distribution as it is (quill's extras via extra_body).
plain = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}
checks = 0


def check(cond, what):
    global checks
    if not cond:
        print("FAILED:", what, file=sys.stderr)
        sys.exit(1)
    checks += 1


# Completions, not streamed.
r = client.completions.create(model="llama-tiny", prompt="The license grants", max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
check(r.object == "text_completion" and len(r.choices) == 1, f"completion shape {r}")
check(r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6, f"usage {r.usage}")
greedy = r.choices[0].text

# Streamed: the same text, chunk by chunk.
parts = []
for chunk in client.completions.create(model="llama-tiny", prompt="The license grants", max_tokens=6, temperature=0, stream=True, extra_body={"ignore_eos": True}):
    parts.append(chunk.choices[0].text)
check("".join(parts) == greedy, f"streamed {parts!r} vs {greedy!r}")

# Chat, plain and streamed.
msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
c = client.chat.completions.create(model="llama-tiny", messages=msgs, max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
check(c.object == "chat.completion" and c.choices[0].message.role == "assistant", f"chat shape {c}")
said = c.choices[0].message.content
parts, finish = [], None
for chunk in client.chat.completions.create(model="llama-tiny", messages=msgs, max_tokens=5, temperature=0, stream=True, extra_body={"ignore_eos": True}):
    ch = chunk.choices[0]
    parts.append(ch.delta.content or "")
    finish = ch.finish_reason or finish
check("".join(parts) == said and finish == "length", f"streamed chat {parts!r} vs {said!r}, {finish}")

# n = 2 and seeded reproducibility.
r2 = client.completions.create(model="llama-tiny", prompt="Once", max_tokens=8, temperature=1.0, n=2, seed=5, extra_body={"ignore_eos": True})
check(len(r2.choices) == 2 and sorted(ch.index for ch in r2.choices) == [0, 1], f"n=2 {r2}")
a = client.completions.create(model="llama-tiny", prompt="Once", max_tokens=8, temperature=1.0, seed=5, extra_body={"ignore_eos": True})
b = client.completions.create(model="llama-tiny", prompt="Once", max_tokens=8, temperature=1.0, seed=5, extra_body={"ignore_eos": True})
check(a.choices[0].text == b.choices[0].text == r2.choices[0].text, f"seeded texts differ: {a.choices[0].text!r} {b.choices[0].text!r}")

# Stop: the text ends before the stop string.
full = client.completions.create(model="llama-tiny", prompt="The license grants", max_tokens=12, temperature=0, extra_body={"ignore_eos": True}).choices[0].text
stop = full[len(full) // 2 : len(full) // 2 + 2]
s = client.completions.create(model="llama-tiny", prompt="The license grants", max_tokens=12, temperature=0, stop=[stop], extra_body={"ignore_eos": True})
check(s.choices[0].text == full[: full.index(stop)] and s.choices[0].finish_reason == "stop", f"stop {stop!r}: {s.choices[0].text!r} of {full!r}")

# Logprobs, top 5, against the CPU reference log-softmax (1e-4), completions and chat.
lp = client.completions.create(model="llama-tiny", prompt=ref_prompt, max_tokens=1, temperature=1.0, top_p=1.0, logprobs=5, extra_body=plain)
top = sorted(lp.choices[0].logprobs.top_logprobs[0].values(), reverse=True)
check(0 < len(top) <= 5 and all(abs(g - w) < 1e-4 for g, w in zip(top, ref_top5)), f"completion logprobs {top} vs {ref_top5}")
cl = client.chat.completions.create(model="llama-tiny", messages=msgs, max_tokens=2, temperature=1.0, top_p=1.0, logprobs=True, top_logprobs=5, extra_body=plain)
entries = cl.choices[0].logprobs.content
check(len(entries) >= 1 and len(entries[0].top_logprobs) == 5, f"chat logprobs {cl.choices[0].logprobs}")
check(all(e.logprob <= 0 and e.top_logprobs[0].logprob >= e.logprob - 1e-9 for e in entries), "chat logprobs ordered")

# A bad request and a wrong key: the right status and OpenAI's error shape.
try:
    client.completions.create(model="llama-tiny", prompt="hi", max_tokens=10**9)
    check(False, "max_tokens 1e9 accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400 and e.body.get("param") == "max_tokens" and "context" in e.body.get("message", ""), f"400 body {e.body}")
try:
    openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).completions.create(model="llama-tiny", prompt="hi", max_tokens=1)
    check(False, "wrong key accepted")
except openai.AuthenticationError as e:
    check(e.status_code == 401 and e.body.get("code") == "invalid_api_key", f"401 body {e.body}")

print(f"all openai client checks passed ({checks})")
