"""What a bundled model can do, measured the same way for each (the README's model table).

    OMP_NUM_THREADS=2 .venv/bin/python bench/model_skills.py MODEL OUT.json [--dtype bfloat16]

- load: wall time of ``headatlas.load`` in this process (first load or reload: ``cache_before`` says which)
  and the process's peak RSS at the end (``ru_maxrss``);
- MCQA: 20 lettered prototypical-colour questions, 4 options, 3 worked examples (the MCQA detectors'
  default format, ``tasks/mcqa.py``), scored like their skill gate (``letter_logits``: the answer letter's
  logit at ``Answer:`` against the other letters); accuracy, one-sided binomial p against 25%, letters
  predicted;
- ICL: antonyms, 8-shot ``Q: x\\nA: y`` prompts (``tasks/icl.py``), 10 prompts: next-token argmax == answer,
  and the same queries zero-shot;
- IOI: 10 prompts of the first template (``tasks/ioi.py``): logit(IO) - logit(S) at the last position
  (accuracy = share of prompts where it is > 0) and whether IO is the top-1 token;
- one forward over 8 x 64 random tokens (seconds), and the greedy completion of "The capital of France is".
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

import headatlas
from headatlas.detectors.mcqa import answer_letter_ids
from headatlas.detectors.mcqa_ep import binomial_above_chance, letter_logits
from headatlas.models import BUNDLED
from headatlas.models.loading import _gguf_cache_folder
from headatlas.tasks.icl import icl_batch, icl_tasks
from headatlas.tasks.ioi import ioi_batch
from headatlas.tasks.mcqa import mcqa_batch


def last_logits(m, ids: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """``[B, vocab]`` next-token logits at the last position (prompts of equal length)."""
    out = []
    with torch.no_grad():
        for s in range(0, ids.shape[0], batch):
            out.append(m.model(input_ids=ids[s:s + batch].to(m.device), use_cache=False, logits_to_keep=1)
                       .logits[:, -1].float().cpu())
    return torch.cat(out)


def mcqa(m, n: int = 20, seed: int = 0) -> dict:
    b = mcqa_batch(m.tokenizer, n, seed=seed, topic="colors", shots=3, n_options=4)
    ll = letter_logits(m, b.ids, b.final_pos, answer_letter_ids(m.tokenizer, b), 4)
    hits = ll.argmax(1) == b.correct
    return {"format": "colors, 3 worked examples, 4 options", "n": n, "correct": int(hits.sum()),
            "accuracy": float(hits.double().mean()), "binomial_p": binomial_above_chance(int(hits.sum()), n, 0.25),
            "predicted_letters": torch.bincount(ll.argmax(1), minlength=4).tolist(), "seq": int(b.ids.shape[1])}


def icl(m, n: int = 10, k: int = 8, seed: int = 0, task: str = "antonym") -> dict:
    t = icl_tasks(m.tokenizer, seed=seed, names=[task])[0]
    b = icl_batch(m.tokenizer, t, n, k, seed=seed)
    few = (last_logits(m, b.clean).argmax(1) == b.answer)
    zero = (last_logits(m, b.zero).argmax(1) == b.answer)
    return {"task": task, "shots": k, "n": n, "correct": int(few.sum()), "accuracy": float(few.double().mean()),
            "zero_shot_correct": int(zero.sum()), "items_dropped": t.dropped}


def ioi(m, n: int = 10, seed: int = 0) -> dict:
    b = ioi_batch(m.tokenizer, n, seed=seed, template=0)
    lg = last_logits(m, b.clean_ids)
    rows = torch.arange(n)
    diff = lg[rows, b.io_ids] - lg[rows, b.s_ids]
    return {"template": b.template, "n": n, "correct": int((diff > 0).sum()), "accuracy": float((diff > 0).double().mean()),
            "io_top1": int((lg.argmax(1) == b.io_ids).sum()), "logit_diff_mean": float(diff.mean()),
            "logit_diff_min": float(diff.min()), "logit_diff_max": float(diff.max())}


def forward_seconds(m, batch: int = 8, seq: int = 64, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, min(m.info.vocab_size, 30000), (batch, seq), generator=g)
    with torch.no_grad():
        t0 = time.perf_counter()
        m.model(input_ids=ids.to(m.device), use_cache=False)
        return time.perf_counter() - t0


def greedy(m, prompt: str = "The capital of France is", new: int = 6) -> str:
    ids = m.tokenizer(prompt, return_tensors="pt").input_ids.to(m.device)
    with torch.no_grad():
        out = m.model.generate(ids, max_new_tokens=new, do_sample=False, pad_token_id=m.tokenizer.eos_token_id)
    return m.tokenizer.decode(out[0, ids.shape[1]:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--skip-tasks", action="store_true", help="load, forward and greedy completion only")
    a = ap.parse_args()
    bundled = BUNDLED.get(a.model)
    t0 = time.perf_counter()
    path = bundled.locate() if bundled else None
    locate_s = time.perf_counter() - t0
    dtype = torch.bfloat16 if a.dtype in ("bfloat16", "bf16") else torch.float32
    cache_before = bool(path) and _gguf_cache_folder(path, dtype).is_dir()
    t1 = time.perf_counter()
    m = headatlas.load(a.model, dtype=a.dtype, device="cpu")
    res: dict = {"model": a.model, "dtype": str(m.dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
                 "locate_s": locate_s, "load_s": time.perf_counter() - t1, "cache_before": cache_before,
                 "info": m.info.to_dict()}
    if path:
        res["gguf_bytes"] = path.stat().st_size
        cache = _gguf_cache_folder(path, dtype)
        res["cache_bytes"] = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) if cache.is_dir() else None
    res["rss_after_load_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    res["forward_8x64_s"] = forward_seconds(m)
    res["greedy"] = greedy(m)
    if not a.skip_tasks:
        for name, fn in (("mcqa", mcqa), ("icl", icl), ("ioi", ioi)):
            t = time.perf_counter()
            res[name] = fn(m)
            res[name]["seconds"] = time.perf_counter() - t
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
