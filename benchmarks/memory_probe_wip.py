import sys, os, contextlib, torch
from minift.train.memory import estimate, resident_bytes, peak_resident_bytes
from minift.train.objective import Objective
from minift.optim import AdamW
from minift.models.gpt2 import GPT2LMHeadModel, GPT2Config
from minift.data import LabelMap
from minift.train.tasks.classification import build_classifier
prec, B, T, arch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
if arch == "gpt2":
    model = GPT2LMHeadModel(GPT2Config.from_dict({"vocab_size": 50257, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024}))  # GPT-2 small shapes
    obj = Objective("next-tokens")
    V = model.config.vocab_size
    mk = lambda b: {"input_ids": torch.randint(0, V, (b, T)), "labels": torch.randint(0, V, (b, T))}
else:
    model, _, _ = build_classifier("all-MiniLM-L6-v2", LabelMap.from_labels(["a", "b"]))
    obj = Objective("examples")
    mk = lambda b: {"input_ids": torch.randint(1000, 2000, (b, T)), "attention_mask": torch.ones(b, T, dtype=torch.long),
                    "token_type_ids": torch.zeros(b, T, dtype=torch.long), "labels": torch.randint(0, 2, (b,))}
class L:  # a loader-like probe source
    dataset = [0]
    collate_fn = staticmethod(lambda xs: mk(len(xs)))
ac = torch.autocast("cpu", dtype=torch.bfloat16) if prec == "bf16" else contextlib.nullcontext()
model.train()
est = estimate(model, obj.loss, L, device=torch.device("cpu"), autocast=ac, precision=prec, batch_size=B)
opt = AdamW(model.parameters(), lr=1e-5)
batch = mk(B)
for step in range(3):
    with ac:
        loss = obj.loss(model, batch)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
print(f"{arch} {prec} {B}x{T}: {est.describe()}")
print(f"  estimate {est.peak/2**30:.3f} GiB, measured peak RSS {peak_resident_bytes()/2**30:.3f} GiB, ratio {est.peak/peak_resident_bytes():.3f}")
A=est.activations; base=est.now+est.optimizer+est.gradients
print(f"  (RSS - now - O - G) / A = {(peak_resident_bytes()-base)/A:.2f}; largest {est.largest_activation/2**30:.3f}")
