#!/usr/bin/env python
"""DPO training throughput: jax-align against TRL's ``DPOTrainer``, side by side in one run (issue 13 item 9).

    JAX_PLATFORMS=cpu .venv/bin/python tools/bench_dpo.py --config bench --steps 10 --alternate

Both sides train the same random Hugging Face ``LlavaForConditionalGeneration`` (Llama + CLIP, built offline
here) on the same preference pairs, token for token: the rows are tokenized once by jax-align's pipeline
(:class:`jax_align.data.pipeline.DataPipeline`) and TRL receives those ids (prompt + chosen, prompt + rejected,
right-padded, the trained response tokens as its ``completion_mask``) and the same pixels through a collator,
so TRL's own step (``DPOTrainer.train``: its loss, backward, gradient clipping and AdamW) runs on them. Same
batch (``--pairs`` pairs every step), fp32, sigmoid DPO with beta 0.1, AdamW (constant lr, no weight decay,
global-norm clip 1.0), vision tower frozen on both sides, no gradient checkpointing.

Sides, each a subprocess of its own (so peak memory, the RSS high-water mark, is per side):

* ``jax-copy``: jax-align's trainer pieces (``Trainer._model``, ``state_spec``, ``make_train_step``, the
  trainer's jit with donation) with the online reference copy (``ref.mode=copy``);
* ``jax-cached``: the same with reference log-probs computed once before training (``ref.mode=cached``; the
  one-off reference pass is reported, not counted in the step);
* ``trl``: TRL's ``DPOTrainer`` with its reference model (TRL refuses ``precompute_ref_log_probs`` for vision
  datasets, so there is no cached-reference TRL side).

Timed per step: jax-align from the host batch to the step's metrics on the host (transfer, step, sync); TRL from
``on_step_begin`` to ``on_step_end`` (forward, backward, clip, optimizer). Data loading is excluded on both sides
(the same pairs every step). ``--alternate`` runs one step per side in turn, so a busy machine slows all sides
alike. Model FLOPs per step are counted the same way for both sides: ``6 * params * tokens`` for the policy plus
``2 * params * tokens`` for an online reference forward, with ``tokens`` the pairs' prompt + response tokens
(prompt counted once per response, as TRL feeds it) and ``params`` all of the model's parameters. The matmul
peak is an fp32 ``N x N`` product in JAX and in torch measured in the same run (``tools/bench_matmul.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_matmul import busy_threads, thread_cpu  # noqa: E402

SIDES = ("jax-copy", "jax-cached", "trl")

CONFIGS = {  # text (hidden, intermediate, heads, kv heads, layers, vocab), vision (hidden, layers, image, patch)
    "tiny": dict(hidden=64, intermediate=128, heads=4, kv_heads=4, layers=2, vocab=600, vision_hidden=32,
                 vision_layers=1, image_size=32, patch_size=16),
    "bench": dict(hidden=512, intermediate=1408, heads=8, kv_heads=8, layers=6, vocab=7000, vision_hidden=256,
                  vision_layers=4, image_size=64, patch_size=16),
    "7b-width": dict(hidden=4096, intermediate=11008, heads=32, kv_heads=32, layers=2, vocab=32064,
                     vision_hidden=1024, vision_layers=2, image_size=336, patch_size=14),
}
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}USER: {{ m['content'] }} "
            "{% else %}ASSISTANT: {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


# ------------------------------------------------------------------------------------------------ inputs
def build_inputs(root: str, a) -> dict:
    """A random HF LLaVA (+ word-level tokenizer with a chat template, CLIP preprocessor), PNG images and a
    pairwise JSONL of ``a.pairs`` records, all under ``root``. Returns facts about them."""
    import torch
    from PIL import Image
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlavaConfig, LlavaForConditionalGeneration, PreTrainedTokenizerFast

    from jax_align.presets import clip_preprocessor_config, tiny_llava_hf_config

    size = dict(CONFIGS[a.config])
    if a.layers:
        size["layers"] = a.layers
    model_dir = os.path.join(root, "model")
    os.makedirs(model_dir, exist_ok=True)
    words = [f"w{i}" for i in range(size["vocab"] - len(SPECIALS) - 2)] + ["USER", "ASSISTANT:"]
    vocab = {w: i for i, w in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=["<image>"])
    fast.chat_template = TEMPLATE
    fast.save_pretrained(model_dir)
    hf = tiny_llava_hf_config(vocab_size=size["vocab"], image_token_id=vocab["<image>"], hidden=size["hidden"],
                              layers=size["layers"], heads=size["heads"], kv_heads=size["kv_heads"],
                              intermediate=size["intermediate"], vision_hidden=size["vision_hidden"],
                              vision_layers=size["vision_layers"], image_size=size["image_size"],
                              patch_size=size["patch_size"], max_positions=max(512, a.max_length))
    hf["vision_config"]["num_attention_heads"] = max(1, size["vision_hidden"] // 64)
    torch.manual_seed(a.seed)
    model = LlavaForConditionalGeneration(LlavaConfig(**{k: v for k, v in hf.items() if k != "architectures"}))
    model.save_pretrained(model_dir)
    params = sum(p.numel() for p in model.parameters())
    del model
    with open(os.path.join(model_dir, "preprocessor_config.json"), "w") as f:
        json.dump(clip_preprocessor_config(size["image_size"]), f)
    rng = np.random.default_rng(a.seed)
    data_dir = os.path.join(root, "data")
    os.makedirs(data_dir, exist_ok=True)
    lines = []
    for i in range(a.pairs):
        img = f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size["image_size"], size["image_size"], 3), np.uint8)).save(
            os.path.join(data_dir, img))
        text = lambda n: " ".join(words[j] for j in rng.integers(0, len(words) - 2, n))  # noqa: E731
        lines.append({"prompt": f"<image>\n{text(a.prompt_words)}", "chosen": text(a.response_words),
                      "rejected": text(a.response_words + 4 * (i % 3) - 4), "image": img})
    with open(os.path.join(data_dir, "pairs.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in lines)
    return {"model_dir": model_dir, "data": os.path.join(data_dir, "pairs.jsonl"), "params": params,
            "size": size}


def side_config(a, root: str, side: str):
    """The jax-align config both jax sides train with (also what the TRL side mirrors)."""
    from jax_align.train.config import load_config

    overrides = [f"run.dir={os.path.join(root, 'run_' + side)}", "run.stage=dpo", f"run.seed={a.seed}",
                 f"model.path={os.path.join(root, 'model')}", f"data.train={os.path.join(root, 'data', 'pairs.jsonl')}",
                 f"data.batch_size={a.pairs}", f"data.max_length={a.max_length}",
                 f"data.buckets=[{a.bucket or ''}]",  # [] = jax-align's default ladder
                 "data.shuffle=false", "data.format=pairwise", f"optim.lr={a.lr}", "optim.schedule=constant",
                 "optim.weight_decay=0.0", "optim.clip=1.0", "optim.grad_accum=1", "loss.beta=0.1",
                 "loss.loss_type=sigmoid", f"train.steps={10 ** 6}", "model.compute_dtype=float32",
                 "model.param_dtype=float32", f"ref.mode={'cached' if side == 'jax-cached' else 'copy'}"]
    return load_config(None, overrides)


def _respond(obj: dict) -> None:
    print("BENCH " + json.dumps(obj), flush=True)


def _rss_mb() -> float:
    """The process's peak resident memory so far (the RSS high-water mark)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _rss_now_mb() -> float:
    """The process's resident memory now (Linux /proc; else the high-water mark)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024.0
    except (OSError, StopIteration):
        return _rss_mb()


def _commands():
    """Yields the step counts the parent asks for ('run N'); stops at 'quit'."""
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            return
        yield int(cmd[1])


# ------------------------------------------------------------------------------------------------ jax side
def jax_worker(a, root: str, side: str) -> None:
    import jax

    from jax_align.compile_cache import enable_compilation_cache
    from jax_align.data.buckets import resolve_buckets
    from jax_align.data.pipeline import DataConfig, DataPipeline
    from jax_align.host_memory import trim_host_memory
    from jax_align.sharding import make_mesh, rules_from_config, use_rules
    from jax_align.train.optim import build_optimizer
    from jax_align.train.stages import get_stage
    from jax_align.train.state_spec import jit_step, param_shardings, place_train_state, split_params
    from jax_align.train.steps import StepSpec, make_train_step
    from jax_align.train.trainer import Trainer, stack_micro_batches

    base_rss = _rss_now_mb()  # after the imports, before any model, data or compile
    enable_compilation_cache()  # as every jax-align command (JAX_ALIGN_CACHE_DIR=off turns it off)
    t_setup = time.perf_counter()
    cfg = side_config(a, root, side)
    stage = get_stage("dpo")
    trainer = Trainer(cfg)
    model_dir = cfg.model.path
    config, model = trainer._model(model_dir)
    dcfg = DataConfig(path=cfg.data.train, format="pairwise", model_dir=model_dir, batch_size=a.pairs,
                      buckets=resolve_buckets(cfg.data.buckets, cfg.data.max_length),
                      max_length=cfg.data.max_length, layout=cfg.data.layout, seed=cfg.run.seed,
                      shuffle=False, num_epochs=None, drop_remainder=True)
    ref_seconds = 0.0
    table = None
    if cfg.ref.mode == "cached":
        t0 = time.perf_counter()
        table = trainer._reference_table(dcfg, model, model_dir, a.pairs, 2)
        ref_seconds = time.perf_counter() - t0
    pipeline = DataPipeline(dcfg, reference_logps=table)
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=jax.devices())
    rules = rules_from_config(cfg.mesh.rules)
    trees = split_params(cfg, stage, model, config.text.hidden_size)
    del model
    tx = build_optimizer(cfg.optim, cfg.train.steps, trees.params)
    state, frozen, ref = place_train_state(trees, param_shardings(trees, mesh, rules), tx, mesh, cfg.run.seed)
    graphdef = trees.graphdef
    del trees
    trim_host_memory()  # as the trainer does after setup
    step_fn = make_train_step(graphdef, StepSpec.from_config(cfg, stage, groups=a.pairs, responses=2), tx)
    host = stack_micro_batches([next(pipeline.iterator())], pipeline.tokenizer.pad_id)
    seg, resp = host["segment_ids"][0] != 0, host["response_ids"][0] >= 0
    tokens = int((2 * (seg & ~resp) + (seg & resp)).sum()) if cfg.data.layout == "prefix_shared" else int(seg.sum())
    sharding_of = lambda tree: jax.tree.map(lambda x: x.sharding, tree)  # noqa: E731
    state_sh = sharding_of(state)
    fn = None
    with jax.set_mesh(mesh), use_rules(rules):
        def one():
            nonlocal state, fn
            c0, t0 = time.process_time(), time.perf_counter()
            batch = Trainer._global_batch(host, mesh)
            if fn is None:  # compiled ahead of the call, the compiler's scratch trimmed: as the trainer does
                fn = jit_step(step_fn, state_sh, sharding_of(frozen), None if ref is None else sharding_of(ref),
                              sharding_of(batch), mesh).lower(state, frozen, ref, batch).compile()
                trim_host_memory()
            state, metrics = fn(state, frozen, ref, batch)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            return time.perf_counter() - t0, time.process_time() - c0, metrics

        first_s, _, m1 = one()
        m2 = one()[2]
        _respond({"ready": True, "setup_s": time.perf_counter() - t_setup, "first_step_s": first_s,
                  "ref_pass_s": ref_seconds, "loss1": m1["loss"], "loss2": m2["loss"],
                  "logps_chosen1": m1["logps/chosen"], "logps_rejected1": m1["logps/rejected"],
                  "tokens": tokens, "row_length": int(host["input_ids"].shape[-1]),
                  "rows": int(host["input_ids"].shape[1]), "layout": cfg.data.layout, "base_rss_mb": base_rss})
        for n in _commands():
            before = thread_cpu()
            runs = [one() for _ in range(n)]
            _respond({"wall": [r[0] for r in runs], "cpu": [r[1] for r in runs],
                      "threads": busy_threads(before, thread_cpu())})
    _respond({"peak_rss_mb": _rss_mb()})


# ------------------------------------------------------------------------------------------------ TRL side
def trl_batches(a, root: str):
    """TRL's batch from jax-align's own tokenization of the same records: ``input_ids`` (chosen rows, then
    rejected rows, right-padded), ``attention_mask``, ``completion_mask`` (the tokens jax-align trains on),
    ``pixel_values`` (each pair's image for both of its rows)."""
    import torch

    from jax_align.data.buckets import resolve_buckets
    from jax_align.data.pipeline import DataConfig, DataPipeline

    cfg = side_config(a, root, "trl")
    pipe = DataPipeline(DataConfig(path=cfg.data.train, format="pairwise", model_dir=cfg.model.path,
                                   batch_size=a.pairs, buckets=resolve_buckets(cfg.data.buckets,
                                                                               cfg.data.max_length),
                                   max_length=cfg.data.max_length, shuffle=False))
    groups = [pipe.processor((0, pipe.source[i])) for i in range(a.pairs)]
    rows, masks, pixels = [], [], []
    for k in (0, 1):
        for g in groups:
            r = g.tokens.responses[k]
            rows.append(np.concatenate([g.tokens.prefix, r.ids]))
            masks.append(np.concatenate([np.zeros_like(g.tokens.prefix, bool), r.trained]))
            pixels.append(g.pixel_values[0])
    length = max(len(r) for r in rows)
    ids = np.full((len(rows), length), pipe.tokenizer.pad_id, np.int64)
    att = np.zeros((len(rows), length), np.int64)
    comp = np.zeros((len(rows), length), np.int64)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        ids[i, : len(r)], att[i, : len(r)], comp[i, : len(r)] = r, 1, m
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(att),
            "completion_mask": torch.tensor(comp), "pixel_values": torch.tensor(np.stack(pixels))}


def trl_worker(a, root: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoProcessor, LlavaForConditionalGeneration, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    base_rss = _rss_now_mb()  # after the imports, before any model, data or step
    t_setup = time.perf_counter()
    batch = trl_batches(a, root)
    model_dir = os.path.join(root, "model")
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    for p in model.model.vision_tower.parameters():  # jax-align's default: the vision tower is frozen
        p.requires_grad_(False)
    processor = AutoProcessor.from_pretrained(model_dir)
    dataset = Dataset.from_dict({"image": list(range(a.pairs)), "prompt": [""] * a.pairs})
    args = DPOConfig(output_dir=os.path.join(root, "run_trl"), per_device_train_batch_size=a.pairs,
                     gradient_accumulation_steps=1, learning_rate=a.lr, lr_scheduler_type="constant",
                     warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
                     max_grad_norm=1.0, max_steps=10 ** 6, beta=0.1, loss_type=["sigmoid"],
                     gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, report_to=[],
                     save_strategy="no", logging_steps=10 ** 6, remove_unused_columns=False, seed=a.seed,
                     dataloader_num_workers=0, max_length=None, precompute_ref_log_probs=False, disable_tqdm=True)
    collate = lambda examples: dict(batch)  # noqa: E731  (every step: the same pairs, tokenized by jax-align)
    tokens = int(batch["attention_mask"].sum())

    class Timer(TrainerCallback):
        def __init__(self):
            self.t0 = self.c0 = 0.0
            self.wall, self.cpu, self.steps = [], [], 0
            self.commands = _commands()
            self.pending = 0
            self.first = {}
            self.threads0: dict = {}

        def on_step_begin(self, args, state, control, **kw):
            if self.steps >= 2 and not self.wall:
                self.threads0 = thread_cpu()
            self.c0, self.t0 = time.process_time(), time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
            self.steps += 1
            metrics = trainer._metrics["train"]
            if self.steps <= 2:
                self.first[self.steps] = (wall, trainer._last_loss, metrics["logps/chosen"][-1],
                                          metrics["logps/rejected"][-1])
                if self.steps < 2:
                    return
                (w1, l1, c1, r1), (_, l2, _, _) = self.first[1], self.first[2]
                _respond({"ready": True, "setup_s": time.perf_counter() - t_setup - w1, "first_step_s": w1,
                          "ref_pass_s": 0.0, "loss1": l1, "loss2": l2, "logps_chosen1": c1,
                          "logps_rejected1": r1, "tokens": tokens, "row_length": int(batch["input_ids"].shape[1]),
                          "rows": int(batch["input_ids"].shape[0]), "layout": "naive (TRL: padded to longest)",
                          "base_rss_mb": base_rss})
            else:
                self.wall.append(wall)
                self.cpu.append(cpu)
                self.pending -= 1
                if self.pending > 0:
                    return
                _respond({"wall": self.wall, "cpu": self.cpu,
                          "threads": busy_threads(self.threads0, thread_cpu())})
                self.wall, self.cpu = [], []
            self.pending = next(self.commands, 0)
            if self.pending == 0:
                _respond({"peak_rss_mb": _rss_mb()})
                sys.stdout.flush()
                os._exit(0)

    class LossTrainer(DPOTrainer):
        def training_step(self, *args, **kwargs):
            loss = super().training_step(*args, **kwargs)
            self._last_loss = float(loss.detach())
            return loss

    trainer = LossTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                          data_collator=collate, callbacks=[Timer()])
    trainer.train()


# ------------------------------------------------------------------------------------------------ parent
class Side:
    def __init__(self, name: str, a, root: str):
        self.name = name
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--dir", root, *a.passthrough]
        env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"), TRANSFORMERS_VERBOSITY="error",
                   TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info: dict = {}
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.threads: list[int] = []

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("BENCH "):
                return json.loads(line[6:])
        raise RuntimeError(f"{self.name}: worker exited ({self.proc.wait()}) without an answer")

    def wait_ready(self) -> None:
        self.info = self._read()

    def run(self, n: int) -> None:
        self.proc.stdin.write(f"run {n}\n")
        self.proc.stdin.flush()
        got = self._read()
        self.wall += got["wall"]
        self.cpu += got["cpu"]
        self.threads.append(got["threads"])

    def close(self) -> None:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.info.update(self._read())
        self.proc.wait(timeout=120)


def matmul_peak(n: int) -> dict:
    out = {}
    for engine in ("jax", "torch"):
        p = subprocess.run([sys.executable, os.path.join(HERE, "bench_matmul.py"), "--worker", engine, "--n", str(n),
                            "--shapes", "--repeats", "5"], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu")))
        if p.returncode:
            raise RuntimeError(f"bench_matmul {engine}: {p.stderr.strip()[-300:]}")
        res = json.loads(p.stdout.strip().splitlines()[-1])[f"{n}x{n}x{n}"]
        out[engine] = res["gflops"]
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="bench",
                   help="model size: tiny (tests), bench (~29M parameters), 7b-width (LLaVA-1.5-7B widths)")
    p.add_argument("--layers", type=int, default=0, help="decoder depth (default: the config's)")
    p.add_argument("--pairs", type=int, default=8, help="preference pairs per step (the batch)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per side (after 2 untimed ones)")
    p.add_argument("--alternate", action="store_true", help="one step per side in turn (default: side by side "
                   "blocks of all steps)")
    p.add_argument("--max-length", type=int, default=512, help="jax-align data.max_length (the default 512)")
    p.add_argument("--bucket", type=int, default=0, help="force one jax-align length bucket (default: jax-align's "
                   "default ladder, data.buckets.default_buckets(--max-length))")
    p.add_argument("--prompt-words", type=int, default=40)
    p.add_argument("--response-words", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    p.add_argument("--matmul-n", type=int, default=2048, help="size of the fp32 matmul peak")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.pairs < 1 or a.steps < 1 or a.max_length < 16 or (a.bucket and a.bucket > a.max_length):
        p.error("--pairs and --steps must be >= 1, --max-length >= 16, --bucket <= --max-length")
    a.passthrough = [f"--config={a.config}", f"--layers={a.layers}", f"--pairs={a.pairs}",
                     f"--max-length={a.max_length}", f"--bucket={a.bucket}", f"--lr={a.lr}", f"--seed={a.seed}",
                     f"--prompt-words={a.prompt_words}", f"--response-words={a.response_words}"]
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.worker:
        (trl_worker(a, a.dir) if a.worker == "trl" else jax_worker(a, a.dir, a.worker))
        return 0
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_dpo_") as root:
        facts = build_inputs(root, a)
        peak = matmul_peak(a.matmul_n)
        # the sides set up (imports, model, data, compile) at the same time; the timed steps never overlap
        sides = [Side(name, a, root) for name in a.sides]
        for s in sides:
            s.wait_ready()
        if a.alternate:
            for i in range(a.steps):
                for s in (sides if i % 2 == 0 else sides[::-1]):
                    s.run(1)
        else:
            for s in sides:
                s.run(a.steps)
        for s in sides:
            s.close()
    load1 = os.getloadavg()
    report = summarise(a, facts, peak, sides, load0, load1)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def summarise(a, facts, peak, sides, load0, load1) -> dict:
    params = facts["params"]
    best = max(peak.values())
    from jax_align.data.buckets import resolve_buckets

    ladder = resolve_buckets([a.bucket] if a.bucket else [], a.max_length)
    used = sorted({s.info["row_length"] for s in sides if s.name != "trl"})
    print(f"bench_dpo: config {a.config} ({params / 1e6:.1f}M parameters, {facts['size']['layers']} decoder "
          f"layers, hidden {facts['size']['hidden']}), {a.pairs} pairs/step, fp32, sigmoid DPO beta 0.1, AdamW "
          f"lr {a.lr:g}, clip 1.0; {a.steps} timed steps per side{' alternating' if a.alternate else ''}")
    print(f"jax-align: data.max_length {a.max_length}, buckets {list(ladder)}"
          f"{' (forced by --bucket)' if a.bucket else ' (the default ladder)'}, bucket used "
          f"{'/'.join(map(str, used)) or '-'}; load average "
          f"{load0[0]:.2f} before, {load1[0]:.2f} after ({os.cpu_count()} CPUs)")
    print(f"matmul peak (fp32 {a.matmul_n}^2): JAX {peak['jax']:.1f} GFLOP/s, torch {peak['torch']:.1f} GFLOP/s")
    print("cpu s: CPU-seconds per step (all threads); thr: threads doing >= 10% of the side's CPU work")
    print("peak MB: the side's RSS high-water mark (imports, model, data, compile and steps); +MB: that peak less "
          "the side's RSS right after its imports (jax + jax-align; torch + transformers + TRL)")
    print("FLOPs per step = 6 * params * tokens (policy) + 2 * params * tokens (online reference forward); "
          "tokens = prompt + response tokens of every response")
    header = (f"{'side':<11}{'step s':>9}{'cpu s':>8}{'thr':>4}{'pairs/s':>9}{'tokens/s':>10}"
              f"{'GFLOP/s':>9}{'% peak':>8}"
              f"{'peak MB':>9}{'+MB':>7}{'tokens':>8}{'rows x len':>12}{'loss1':>9}{'loss2':>9}{'logp_c1':>10}"
              f"{'first s':>9}")
    print(header)
    out = {"config": a.config, "params": params, "pairs": a.pairs, "max_length": a.max_length,
           "buckets": list(ladder), "bucket": used[0] if len(used) == 1 else used,
           "load_before": load0, "load_after": load1, "matmul_gflops": peak, "sides": {}}
    for s in sides:
        info = s.info
        wall, cpu = statistics.median(s.wall), statistics.median(s.cpu)
        flops = (6 + (0 if s.name == "jax-cached" else 2)) * params * info["tokens"]
        gflops = flops / wall / 1e9
        row = {"step_s": wall, "cpu_s": cpu, "busy_threads": max(s.threads), "pairs_per_s": a.pairs / wall,
               "tokens_per_s": info["tokens"] / wall,
               "flops_per_step": flops, "gflops": gflops, "fraction_of_peak": gflops / best,
               "peak_rss_mb": info["peak_rss_mb"], "base_rss_mb": info["base_rss_mb"],
               "rss_increase_mb": info["peak_rss_mb"] - info["base_rss_mb"],
               **{k: info[k] for k in ("tokens", "rows", "row_length", "loss1", "loss2", "logps_chosen1",
                                       "logps_rejected1", "first_step_s", "ref_pass_s", "setup_s", "layout")},
               "wall_all": s.wall, "cpu_all": s.cpu}
        out["sides"][s.name] = row
        print(f"{s.name:<11}{wall:>9.3f}{cpu:>8.2f}{row['busy_threads']:>4}{row['pairs_per_s']:>9.2f}"
              f"{row['tokens_per_s']:>10.0f}{gflops:>9.1f}{100 * row['fraction_of_peak']:>7.1f}%"
              f"{row['peak_rss_mb']:>9.0f}{row['rss_increase_mb']:>7.0f}{info['tokens']:>8}"
              f"{info['rows']:>5} x {info['row_length']:<5}{info['loss1']:>9.5f}{info['loss2']:>9.5f}"
              f"{info['logps_chosen1']:>10.3f}{info['first_step_s']:>9.1f}")
    if "trl" in out["sides"]:
        trl = out["sides"]["trl"]
        for name in ("jax-copy", "jax-cached"):
            if name in out["sides"]:
                j = out["sides"][name]
                print(f"{name} / trl: pairs/s x{j['pairs_per_s'] / trl['pairs_per_s']:.2f}, peak memory "
                      f"x{j['peak_rss_mb'] / trl['peak_rss_mb']:.2f} (over the post-import baseline "
                      f"x{j['rss_increase_mb'] / trl['rss_increase_mb']:.2f}); first-step loss {j['loss1']:.6f} vs "
                      f"{trl['loss1']:.6f}, mean chosen log-prob {j['logps_chosen1']:.4f} vs "
                      f"{trl['logps_chosen1']:.4f}, second-step loss {j['loss2']:.6f} vs {trl['loss2']:.6f}")
    if "jax-cached" in out["sides"]:
        print(f"jax-cached reference pass (once, before training): {out['sides']['jax-cached']['ref_pass_s']:.1f} s")
    return out


if __name__ == "__main__":
    sys.exit(main())
