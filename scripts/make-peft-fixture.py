"""A LoRA adapter made by PEFT for quill's loader, and PEFT's logits with it (float32, CPU).

Base: tests/fixtures/llama-tiny. Rank 3, alpha 7 (scale 7/3, not a power of two), only four of
the seven projections (q, v, o, down), lora_B drawn at random (PEFT starts it at zero, which
would leave the logits those of the base). Run with torch + transformers + peft:
    python scripts/make-peft-fixture.py tests/fixtures
Writes FIXTURES/train/peft-logits/:
  adapter/               the adapter as PEFT saves it (adapter_config.json, adapter_model.safetensors)
  logits.safetensors     `logits` [T, vocab] of the prompt through base + adapter, `base_logits` without
  prompt.json            the prompt's token ids and the versions used
"""
import json, os, sys

import peft, torch, transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

torch.manual_seed(0)
torch.set_num_threads(2)
FIX = sys.argv[1]
OUT = f"{FIX}/train/peft-logits"
os.makedirs(OUT, exist_ok=True)
g = torch.Generator().manual_seed(7)
ids = torch.randint(1, 1000, (1, 23), generator=g)

m = AutoModelForCausalLM.from_pretrained(f"{FIX}/llama-tiny", dtype=torch.float32).eval()
with torch.no_grad():
    base = m(input_ids=ids).logits[0].contiguous()
cfg = LoraConfig(r=3, lora_alpha=7, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                 target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])
pm = get_peft_model(m, cfg)
with torch.no_grad():
    for n, p in pm.named_parameters():
        if "lora_B" in n:
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
pm.eval()
pm.save_pretrained(f"{OUT}/adapter")
with torch.no_grad():
    logits = pm(input_ids=ids).logits[0].contiguous()
save_file({"logits": logits, "base_logits": base}, f"{OUT}/logits.safetensors")
json.dump({"input_ids": ids[0].tolist(), "made_with": f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}",
           "rule": "logits of every position of input_ids through llama-tiny + the adapter (PEFT, eval mode, float32)"},
          open(f"{OUT}/prompt.json", "w"), indent=1)
print("max |adapter - base| logit", float((logits - base).abs().max()))
