"""The embedded tiny model: a character-level tokenizer and a small Qwen3 causal LM, built in code (no hub).

The warm-started model (supervised on worked solutions of the synthetic tasks, ``evals.tasks``) of seed 0 and the
default recipe is shipped in the package (``training/tiny_model/``, about 3 MB); other seeds and recipes are built on
first use and cached. The build is

    random Qwen3 (seed) -> SFT on train-split worked solutions, loss on solution tokens only; each target opens by
       restating the problem with ``restate_prob`` (``42+12:2+2=4,...``), drawn afresh at every step
    -> every ``eval_every`` steps: sampled accuracy on the dev split (n samples, temperature 1.0, the real grader)
    -> keep the checkpoint whose pass@1 is closest to ``target_pass1`` among those in the window with pass@n
       clearly above pass@1 (so RL finds prompts solved by all, some and none of the samples)
    -> stage 2, habits: ``habit_steps`` more steps at a low lr on targets drawn by ``evals.tasks.sample_solution``,
       which answers without working 30% of the time and keeps stage 1's restatement in the rest.

Why two forms and the habits: a model that always writes its one canonical solution leaves RL little to do but
sharpen (+6 points of held-out pass@1 in 100 GRPO steps) and writes identical strings whenever it is right, so Miner's
intrinsic advantage is 0 by construction (issue 17). A warm start that sometimes guesses, as base models do, gives RL
a habit to unlearn, and two solution forms learned side by side from the first step keep correct answers different
after RL (a restatement taught only in stage 2 was learned worse, so GRPO dropped it: 27% of answers to 2% in 60
steps). Figures in docs/TESTBED.md.

Choosing by measured accuracy rather than by step count matters: the 20-60 % window of a tiny model's sampled
accuracy is narrow and shifts between runs (../shared/ENVIRONMENT.md). The same seed and recipe give bit-identical
weights on one machine: seeded init, a seeded data order, seeded sampling and a fixed thread count.

Why ship it: float reductions differ between CPUs (vector width, kernels), so a build is bit-reproducible on one
machine kind only, and the embedded default must be the same model on every host. ``ensure_tiny_model`` returns the
shipped folder for seed 0 and ``RECIPE`` without building. Its ``tiny_build.json`` holds the recipe, the dev curve and
a fingerprint of the weights after the first ``PREFIX_STEPS`` SFT steps (``prefix``), which the tests replay on any
machine (``replay_prefix``). The shipped model (recipe version 5) was made by one
``python -m training.tiny build --out training/tiny_model`` on a 2-core AVX-512 x86-64 host (its time is the
``build_time_s`` of its ``tiny_build.json``).
"""

import argparse
import dataclasses
import fcntl
import hashlib
import json
import os
import random
import shutil
import string
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from evals import grade_many, render_prompt
from evals.cli import one_line_errors
from evals.problem import Problem
from evals.tasks import MAX_NEW_TOKENS, TASK_NAMES, sample_solution, task_problems
from rollout import SamplingParams, TransformersEngine
from training.config import TINY_BUILD_FILE

PAD, EOS = "<pad>", "<eos>"
CHARACTERS = string.digits + string.ascii_letters + string.punctuation + " \n"
BUILD_FILE = TINY_BUILD_FILE  # written last into the model folder: the recipe, the dev curve and the chosen step
SHIPPED_DIR = Path(__file__).resolve().parent / "tiny_model"  # the built model of seed 0 and RECIPE, in the package
# stage 2 draws its targets as step HABIT_STEP_OFFSET + i (apart from stage 1's), its data order from seed + 1000
HABIT_STEP_OFFSET, HABIT_ORDER_OFFSET = 10_000, 1000
PREFIX_STEPS = 30  # SFT steps whose weights a build fingerprints (a cheap check that the recipe still reproduces)


def char_tokenizer(padding_side: str = "left") -> PreTrainedTokenizerFast:
    """A character-level tokenizer that round-trips every string over ``CHARACTERS`` exactly."""
    vocab = {PAD: 0, EOS: 1} | {c: i + 2 for i, c in enumerate(CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, padding_side=padding_side)


def tiny_config(vocab_size: int, hidden: int = 128, layers: int = 4, max_positions: int = 512) -> Qwen3Config:
    """Qwen3, tied embeddings, 4 heads / 2 kv heads of 32: about 0.8 M parameters at a character vocabulary."""
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )


def random_tiny_model(out_dir: str | Path, seed: int = 0, **config_overrides: int) -> Path:
    """Save a randomly initialised tiny model and its tokenizer to ``out_dir`` (a standard HF model folder)."""
    tokenizer = char_tokenizer()
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny_config(len(tokenizer), **config_overrides))
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# --- the warm start ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Everything besides the seed that determines the warm-started weights; its hash names the cache folder."""

    hidden: int = 128
    layers: int = 4
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 20
    # linear decay from lr at decay_start to lr * final_lr_ratio at decay_end, then constant. The floor is high on
    # purpose: a warm start annealed to a low lr is sharp, and GRPO at lr 1e-4 then only re-heats it (measured:
    # +2 points of test avg@8 in 160 steps from a 0.05 floor, +10 from this 1/3 floor).
    decay_start: int = 0
    decay_end: int = 400
    final_lr_ratio: float = 1 / 3
    max_steps: int = 1500  # most builds stop earlier, at the first dev pass@1 >= target_pass1
    first_eval: int = 450  # sampled dev accuracy stays under 15 % before this
    eval_every: int = 50
    eval_samples: int = 8  # n per dev problem
    eval_problems: int | None = None  # per task, the first ones of the dev split (None: all)
    target_pass1: float = 0.50
    min_pass1: float = 0.15
    max_pass1: float = 0.60
    min_gap: float = 0.15  # pass@n - pass@1 of an acceptable checkpoint
    threads: int = 2  # torch threads during the build: part of the recipe, since reduction order follows it
    # stage 2, habits: the chosen checkpoint goes on for habit_steps steps at habit_lr (constant) on targets drawn by
    # evals.tasks.sample_solution: the answer alone (direct_prob), or the working, restated as in stage 1
    habit_steps: int = 150
    habit_lr: float = 3e-4
    direct_prob: float = 0.3
    restate_prob: float = 0.5  # both stages: the share of worked solutions that open by restating the problem
    habit_threads: int = 1  # torch threads of stage 2
    # bump when the tasks or the training code change what a recipe builds (4: the habit stage; 5: the restatement
    # from stage 1 on, so RL meets two equally learned forms)
    version: int = 5

    def __post_init__(self) -> None:
        if not 0 < self.min_pass1 <= self.target_pass1 <= self.max_pass1 < 1:
            raise ValueError(f"Recipe needs 0 < min_pass1 <= target_pass1 <= max_pass1 < 1, got {self}")
        if not 0 <= self.decay_start <= self.decay_end:
            raise ValueError(f"Recipe needs 0 <= decay_start <= decay_end, got {self}")
        if self.max_steps < 1 or self.eval_every < 1 or self.batch_size < 1 or self.threads < 1:
            raise ValueError(f"Recipe max_steps, eval_every, batch_size and threads must be >= 1, got {self}")
        if self.habit_steps < 0 or not (0 <= self.direct_prob <= 1 and 0 <= self.restate_prob <= 1):
            raise ValueError(f"Recipe needs habit_steps >= 0 and direct_prob, restate_prob in [0, 1], got {self}")

    def lr_at(self, step: int) -> float:
        """lr * min(1, step / warmup) * (1 - (1 - final_lr_ratio) * clip((step - start) / (end - start), 0, 1))."""
        warm = min(1.0, step / max(1, self.warmup_steps))
        span = max(1, self.decay_end - self.decay_start)
        decay = 1.0 - (1.0 - self.final_lr_ratio) * min(1.0, max(0, step - self.decay_start) / span)
        return self.lr * warm * decay


RECIPE = Recipe()


def recipe_hash(recipe: Recipe, seed: int) -> str:
    """A short hash of the recipe and seed: the name of the cached model folder."""
    text = json.dumps({"recipe": dataclasses.asdict(recipe), "seed": seed}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_root() -> Path:
    """``$RLABLATE_CACHE``, else ``~/.cache/rl-ablate``."""
    return Path(os.environ.get("RLABLATE_CACHE") or Path.home() / ".cache" / "rl-ablate")


def _token_rows(
    tokenizer: PreTrainedTokenizerFast, problems: list[Problem], targets: list[str]
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids + EOS) of each problem and its supervised target."""
    prompts = tokenizer([render_prompt("tiny", p) for p in problems], add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
    return [(prompt, [*target, tokenizer.eos_token_id]) for prompt, target in zip(prompts, target_ids, strict=True)]


def _target_rows(
    tokenizer: PreTrainedTokenizerFast,
    problems: list[Problem],
    seed: int,
    step: int,
    direct_prob: float,
    restate_prob: float,
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids + EOS) of ``problems`` at build step ``step``: each target drawn by
    ``sample_solution`` from a stream seeded by (seed, step, problem id), the same on every machine."""
    targets = [
        sample_solution(p, random.Random(f"{seed}:{step}:{p.id}"), direct_prob, restate_prob) for p in problems
    ]  # fmt: skip
    return _token_rows(tokenizer, problems, targets)


def _index_batches(count: int, batch_size: int, order: torch.Generator) -> Iterator[list[int]]:
    """Batches of indices into ``count`` rows: a seeded permutation, a fresh one when its rest cannot fill a batch."""
    while True:
        permutation = torch.randperm(count, generator=order).tolist()
        for position in range(0, count - batch_size + 1, batch_size):
            yield permutation[position : position + batch_size]


def _sft_step(
    model: Qwen3ForCausalLM, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]
) -> torch.Tensor:
    """One supervised step (gradient norm clipped at 1); returns the loss."""
    loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def _collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask, and labels that are -100 except on solution tokens."""
    B, T = len(rows), max(len(prompt) + len(solution) for prompt, solution in rows)
    ids_BT = torch.full((B, T), pad_id, dtype=torch.long)
    attention_BT = torch.zeros((B, T), dtype=torch.long)
    labels_BT = torch.full((B, T), -100, dtype=torch.long)
    for b, (prompt, solution) in enumerate(rows):
        L = len(prompt) + len(solution)
        ids_BT[b, :L] = torch.tensor(prompt + solution)
        attention_BT[b, :L] = 1
        labels_BT[b, len(prompt) : L] = torch.tensor(solution)
    return {"input_ids": ids_BT, "attention_mask": attention_BT, "labels": labels_BT}


def dev_accuracy(
    model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast, n: int, seed: int, problems_per_task: int | None
) -> dict[str, float]:
    """Sampled accuracy on the dev split at temperature 1.0: pass@1 (mean correct), pass@n and the fractions of
    problems solved by all n samples and by none."""
    problems = [p for name in TASK_NAMES for p in task_problems(name, "dev")[:problems_per_task]]
    prompts = [render_prompt("tiny", p) for p in problems]
    params = SamplingParams(n=n, temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW_TOKENS, seed=seed)
    rollout = TransformersEngine(model, tokenizer).generate(prompts, params)
    grades = grade_many([(text, problems[b // n].answer) for b, text in enumerate(rollout.texts)], workers=1)
    correct_PG = torch.tensor([g.correct for g in grades], dtype=torch.float32).view(len(problems), n)
    solved_P = correct_PG.sum(-1)
    return {
        "pass@1": correct_PG.mean().item(),
        f"pass@{n}": (solved_P > 0).float().mean().item(),
        "all_correct": (solved_P == n).float().mean().item(),
        "all_wrong": (solved_P == 0).float().mean().item(),
    }


def weights_fingerprint(model: torch.nn.Module) -> dict[str, list[float]]:
    """Per parameter tensor: [sum_i w_i, sum_i w_i^2] in float64 (a digest that can be compared with a tolerance)."""
    return {name: [float(t.double().sum()), float(t.double().square().sum())] for name, t in model.state_dict().items()}


def _score(metrics: dict[str, float], recipe: Recipe) -> float:
    """Distance of pass@1 from the target; checkpoints outside the window or without a pass@n gap rank last."""
    pass1, passn = metrics["pass@1"], metrics[f"pass@{recipe.eval_samples}"]
    acceptable = recipe.min_pass1 <= pass1 <= recipe.max_pass1 and passn - pass1 >= recipe.min_gap
    return abs(pass1 - recipe.target_pass1) + (0.0 if acceptable else 1.0)


def train_warm_start(
    seed: int, recipe: Recipe, progress: bool = False
) -> tuple[Qwen3ForCausalLM, PreTrainedTokenizerFast, dict]:
    """Run the build recipe in memory: (the chosen model, its tokenizer, a report of the dev curve); ``progress``
    shows a bar over ``max_steps`` whose ETA is an upper bound (most builds stop earlier, at the target)."""
    tokenizer = char_tokenizer()
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny_config(len(tokenizer), hidden=recipe.hidden, layers=recipe.layers))
    problems = [p for name in TASK_NAMES for p in task_problems(name, "train")]
    order = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.99), weight_decay=0.0)
    start, history, best, best_score, prefix = time.perf_counter(), [], None, float("inf"), None
    batches = _index_batches(len(problems), recipe.batch_size, order)
    model.train()
    bar = tqdm(total=recipe.max_steps, desc="tiny build (stops at the target)", unit="step", disable=not progress)
    for step in range(1, recipe.max_steps + 1):
        bar.update()
        batch_problems = [problems[i] for i in next(batches)]
        rows = _target_rows(tokenizer, batch_problems, seed, step, 0.0, recipe.restate_prob)
        batch = _collate(rows, tokenizer.pad_token_id)
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr_at(step)
        loss = _sft_step(model, optimizer, batch)
        if step == PREFIX_STEPS:
            prefix = {"step": step, "fingerprint": weights_fingerprint(model)}
        due = step >= recipe.first_eval and (step - recipe.first_eval) % recipe.eval_every == 0
        if not (due or step == recipe.max_steps):
            continue
        metrics = dev_accuracy(model, tokenizer, recipe.eval_samples, seed, recipe.eval_problems)
        entry = {"step": step, "loss": round(loss.item(), 4), "time_s": round(time.perf_counter() - start, 1)}
        history.append(entry | {k: round(v, 4) for k, v in metrics.items()})
        bar.write(f"tiny build: {json.dumps(history[-1])}", file=sys.stderr)
        score = _score(metrics, recipe)
        if score < best_score:
            best, best_score = {k: v.detach().clone() for k, v in model.state_dict().items()}, score
            chosen = history[-1]
        if metrics["pass@1"] >= recipe.target_pass1:  # accuracy only rises from here: later checkpoints are further
            break
    bar.close()
    model.load_state_dict(best)
    report = {"seed": seed, "recipe": dataclasses.asdict(recipe), "chosen": chosen, "history": history}
    report["prefix"] = prefix
    if recipe.habit_steps:
        report["habits"] = _train_habits(model, tokenizer, seed, recipe, progress)
    model.eval()
    report["acceptable"] = best_score < 1.0
    report["build_time_s"] = round(time.perf_counter() - start, 1)
    return model, tokenizer, report


def _train_habits(
    model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast, seed: int, recipe: Recipe, progress: bool
) -> dict:
    """Stage 2 in place: ``habit_steps`` AdamW steps at ``habit_lr`` on ``_target_rows`` with ``direct_prob`` (a fresh
    optimiser, its own seeded data order) with ``habit_threads`` torch threads; returns the final loss and the dev
    accuracy after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.habit_threads)
    try:
        return _habit_steps(model, tokenizer, seed, recipe, progress)
    finally:
        torch.set_num_threads(threads)


def _habit_steps(
    model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast, seed: int, recipe: Recipe, progress: bool
) -> dict:
    problems = [p for name in TASK_NAMES for p in task_problems(name, "train")]
    order = torch.Generator().manual_seed(seed + HABIT_ORDER_OFFSET)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.habit_lr, betas=(0.9, 0.99), weight_decay=0.0)
    batches, start = _index_batches(len(problems), recipe.batch_size, order), time.perf_counter()
    model.train()
    for step in tqdm(range(1, recipe.habit_steps + 1), desc="tiny build: habits", unit="step", disable=not progress):
        rows = _target_rows(
            tokenizer, [problems[i] for i in next(batches)], seed, HABIT_STEP_OFFSET + step, recipe.direct_prob,
            recipe.restate_prob,
        )  # fmt: skip
        loss = _sft_step(model, optimizer, _collate(rows, tokenizer.pad_token_id))
    metrics = dev_accuracy(model, tokenizer, recipe.eval_samples, seed, recipe.eval_problems)
    entry = {
        "steps": recipe.habit_steps,
        "loss": round(loss.item(), 4),
        "time_s": round(time.perf_counter() - start, 1),
    }
    return entry | {k: round(v, 4) for k, v in metrics.items()}


def build_tiny_model(out_dir: str | Path, seed: int = 0, recipe: Recipe = RECIPE) -> Path:
    """Build the warm-started model into ``out_dir`` atomically (a temporary sibling folder, then a rename)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        model, tokenizer, report = train_warm_start(seed, recipe, progress=True)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(temporary)
    tokenizer.save_pretrained(temporary)
    (temporary / BUILD_FILE).write_text(json.dumps(report, indent=1) + "\n")
    if out_dir.exists():  # a rebuild replaces the old folder; a concurrent build of the same hash is equivalent
        shutil.rmtree(out_dir)
    os.replace(temporary, out_dir)
    return out_dir


def tiny_model_dir(seed: int = 0, cache_dir: str | Path | None = None, recipe: Recipe = RECIPE) -> Path:
    """Where the warm-started model of ``seed`` and ``recipe`` lives in the cache."""
    return Path(cache_dir or cache_root()) / f"tiny-s{seed}-{recipe_hash(recipe, seed)}"


def shipped_model(seed: int = 0, recipe: Recipe = RECIPE) -> Path | None:
    """The shipped model folder when it was built from ``seed`` and ``recipe``, else None."""
    build = SHIPPED_DIR / BUILD_FILE
    if not build.is_file():
        return None
    report = json.loads(build.read_text())
    return SHIPPED_DIR if report["seed"] == seed and report["recipe"] == dataclasses.asdict(recipe) else None


def replay_prefix(seed: int, recipe: Recipe, steps: int = PREFIX_STEPS) -> dict[str, list[float]]:
    """The weights fingerprint after the first ``steps`` stage-1 SFT steps of the recipe, at its thread count (its dev
    evaluation cut to one problem per task and two samples, which changes no weight): compare with a build's
    ``prefix``."""
    short = dataclasses.replace(
        recipe, max_steps=steps, first_eval=steps, eval_samples=2, eval_problems=1, habit_steps=0
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        model, _, _ = train_warm_start(seed, short)
    finally:
        torch.set_num_threads(threads)
    return weights_fingerprint(model)


def ensure_tiny_model(seed: int = 0, cache_dir: str | Path | None = None, recipe: Recipe = RECIPE) -> Path:
    """The embedded warm-started model folder: the shipped one (seed 0, the default recipe, no ``cache_dir``), else
    built on first use (about 6 CPU minutes) into the cache and found there afterwards."""
    if cache_dir is None and (shipped := shipped_model(seed, recipe)) is not None:
        print(f"tiny model: {shipped} (shipped)", file=sys.stderr)
        return shipped
    path = tiny_model_dir(seed, cache_dir, recipe)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one builder at a time: a second process (parallel sweep runs, test workers) waits, then finds the model built
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / BUILD_FILE).is_file():
            print(f"tiny model: {path}", file=sys.stderr)
            return path
        print(f"tiny model: building {path} (about 6 CPU minutes, once)", file=sys.stderr)
        return build_tiny_model(path, seed, recipe)


def main(argv: list[str] | None = None) -> None:
    """``python -m training.tiny build [--seed S] [--out DIR]``: (re)build the warm-started model."""
    parser = one_line_errors(argparse.ArgumentParser(prog="python -m training.tiny", description=main.__doc__))
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="model folder (default: the cache folder)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.exit(2, f"{parser.prog}: error: --seed {args.seed}: must be >= 0\n")
    if args.out is not None and args.out.exists():  # a rebuild replaces the folder: never one holding other files
        if not args.out.is_dir():
            parser.exit(2, f"{parser.prog}: error: --out {args.out}: exists and is not a folder\n")
        if any(args.out.iterdir()) and not (args.out / BUILD_FILE).is_file():
            parser.exit(2, f"{parser.prog}: error: --out {args.out}: not empty and not a tiny-model build (no "
                        f"{BUILD_FILE}); a build replaces the folder, so give an empty or new one\n")  # fmt: skip
    out = build_tiny_model(args.out or tiny_model_dir(args.seed), args.seed)
    print(f"tiny model: {out}")
    if args.out is None and shipped_model(args.seed) is not None:
        print(f"tiny model: the default stays the shipped {SHIPPED_DIR} (rebuilt by --out)", file=sys.stderr)
    print(json.dumps(json.loads((out / BUILD_FILE).read_text())["chosen"]))


if __name__ == "__main__":
    main()
