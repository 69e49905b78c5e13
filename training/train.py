"""The one RL training loop: ``python -m training.train --config run.json [--a.b=value ...] [--resume auto|never]``.

``--print-config`` prints the resolved config (profile or ``--config``, then overrides) as JSON and exits.

Per step: sample P prompts -> the engine generates G completions each -> grade with the evaluation grader ->
shape rewards -> group filter (refill while too few groups) -> old log-probs at the rollout temperature (the
sampler's, a forward, or the update's own: ``RunConfig.old_policy_source``) -> reference log-probs (when
kl_coef > 0) -> advantages over the whole batch -> epochs x mini-batches x micro-batches of AdamW. Validation every
``eval.every`` steps; after the last step the best-on-dev checkpoint is evaluated on the test benchmarks and
``summary.json`` is written last; ``steps=0`` tests the initial model and nothing else (no validation, no
checkpoint). Nothing here branches on an algorithm's name.

One run is complete on its own: ``config.json`` before step 0, then ``metrics.jsonl``, ``samples.jsonl``,
``eval.jsonl``, ``checkpoints/`` and finally ``summary.json`` (docs/DESIGN.md). Exit status 2 is a bad config,
1 a diverged run (the last good checkpoint is kept).
"""

import argparse
import dataclasses
import gc
import json
import os
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any, assert_never

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from algorithms import advantages_with_metrics
from evals import render_prompt
from evals.cli import one_line_errors
from rollout import Engine, TransformersEngine, load_engine
from training import runlog
from training.checkpoint import (
    EXIT_STOPPED,
    Stopped,
    TrainerState,
    best_checkpoint,
    latest_checkpoint,
    restore_training_state,
    save_checkpoint,
    stop_on_signals,
    stop_requested,
)
from training.checks import Claim, claim_run_dir
from training.collect import collect
from training.config import PROFILES, RunConfig, apply_overrides, from_dict, to_dict
from training.distributed import (
    DistInfo,
    barrier,
    full_state_dict,
    init_distributed,
    is_sharded,
    load_model,
    shutdown,
    unwrap,
    whole_copy,
)
from training.evaluation import evaluate_rows, run_meta, select_score
from training.memory import peak_memory_gib, reset_peak_memory
from training.plan import CapacityError, check_capacity
from training.update import TrainingDiverged, batch_logps, lr_factor, update_policy


class ConfigError(ValueError):
    """The run folder does not fit the config (a different config, or checkpoints with --resume never)."""


EPILOG = (
    "Any config field is set as --section.field=value (e.g. --optim.lr=5e-5, --algorithm=dapo, "
    "--algorithm.clip_high=0.28). The fields, their types and defaults are the dataclasses in training/config.py "
    "(one commented line each; the algorithm's in algorithms/presets.py); --profile picks the starting values."
)
POLICY_KEYS = ("policy/loss", "policy/entropy", "policy/approx_kl", "policy/kl_ref")
POLICY_KEYS += ("policy/clip_frac_low", "policy/clip_frac_high", "optim/grad_norm")


def train(config: RunConfig, resume: str = "auto", meta: dict[str, Any] | None = None) -> Path:
    """Run (or continue) the training run ``config`` describes; returns its run folder."""
    info = init_distributed()
    claim = None
    with stop_on_signals() as received:
        try:
            try:  # every check before any work, then the run folder's one-writer lock
                claim = claim_run_dir(config, info)
            except ValueError as error:
                raise ConfigError(str(error)) from None
            return _train(config, resume, meta or {}, info, received, claim)
        except BaseException as error:
            # the traceback keeps _train's locals alive; DDP's reducer freed after its process group deadlocks
            # (gloo's destructor joins a thread that waits for the GIL held by the freeing thread): free them first
            traceback.clear_frames(error.__traceback__)
            gc.collect()
            if claim is not None and claim.fresh and info.is_main:
                runlog.remove_unstarted(runlog.run_dir_of(config))  # a start that failed before step 0: no litter
            raise
        finally:
            if claim is not None and claim.lock is not None:
                claim.lock.close()  # releases the flock (the OS does too when the process dies)
            shutdown(info)


def _train(
    config: RunConfig, resume: str, meta: dict[str, Any], info: DistInfo, received: dict[str, int], claim: Claim
) -> Path:
    start_time = time.perf_counter()
    hf_logging.disable_progress_bar()
    if config.cpu_threads is not None:
        torch.set_num_threads(config.cpu_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    run_dir = runlog.run_dir_of(config)
    if (run_dir / runlog.SUMMARY).exists():
        print(f"{run_dir} is finished (summary.json exists); nothing to do", file=sys.stderr)
        return run_dir
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None and resume == "never":
        raise ConfigError(f"--resume never: {run_dir} already has checkpoints; use --resume auto or a new out_dir")
    checkpoint = checkpoint if resume == "auto" else None
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_config(run_dir, config, meta)
    barrier(info)

    # --- model, optimiser, reference, engine -------------------------------------------------------------------
    model_dir = claim.model_dir  # model.path resolved (a Hub id to its snapshot folder) by claim_run_dir
    if model_dir is None:  # the embedded default: shipped, or built on first use and cached
        from training.tiny import ensure_tiny_model

        model_dir = ensure_tiny_model()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if info.device.type == "cuda":  # refuse a run predicted not to fit before loading anything on the GPU
        gpu_gib = torch.cuda.get_device_properties(info.device).total_memory / 2**30
        check_capacity(config, info.world_size, gpu_gib, model_dir)
    compute_dtype = getattr(torch, config.model.compute_dtype)
    trainer = load_model(model_dir, config, info)
    optim = config.optim
    optimizer = torch.optim.AdamW(
        trainer.parameters(), lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
        weight_decay=optim.weight_decay,
    )  # fmt: skip
    total_updates = config.steps * optim.epochs * optim.mini_batches
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, optim.warmup_steps, total_updates, optim.schedule, optim.min_lr_ratio)
    )
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    torch.manual_seed(config.seed + info.rank)
    if checkpoint is not None:
        state = restore_training_state(checkpoint, trainer, optimizer, scheduler, info)
    else:
        state = TrainerState(0, 0, 0, 0, None, None, 0.0, info.world_size)
    reference = None
    if config.algorithm.kl_coef > 0 and config.steps > 0:  # a frozen copy of the initial model, never the checkpoint's
        reference = load_model(model_dir, config, info, frozen=True)
    # An FSDP2 module cannot generate (ranks would run different numbers of forward passes, each a collective),
    # so the transformers engine samples from an unsharded copy refreshed after every update; DDP's module is
    # already whole. vLLM holds its own copy and gathers the shards itself in sync_weights.
    generator_model = unwrap(trainer)
    if is_sharded(trainer) and config.rollout.engine == "transformers":
        generator_model = whole_copy(trainer, model_dir, config.model.attention, info.device)
    engine = _make_engine(config, model_dir, generator_model, tokenizer, info)

    # --- data -----------------------------------------------------------------------------------------------
    template = config.model.prompt_template
    problems = claim.problems
    prompts = [render_prompt(template, problem.problem, tokenizer) for problem in problems]

    log = runlog.RunLog(
        run_dir, info.is_main, config.steps, state.step, config.logging.progress_bar,
        tensorboard=config.logging.tensorboard, wandb_project=config.logging.wandb_project if config.logging.wandb
        else None, run_name=config.run_id, config=to_dict(config),
    )  # fmt: skip
    if info.is_main:
        if checkpoint is not None:
            runlog.cut_back(run_dir, state.step)
            log.write(f"resumed from {checkpoint}")
        else:  # a fresh start: nothing before step 0 counts
            for name in (runlog.METRICS, runlog.EVAL, runlog.SAMPLES):
                runlog.cut_jsonl(run_dir / name, lambda row: False)
    barrier(info)

    def checkpoint_now(state: TrainerState) -> None:
        # departs from issue 14 (a bfloat16 export): the export is in the compute dtype, so a float32 run's test
        # evaluation of its best checkpoint sees the weights it trained
        export = state.best_step == state.step or state.step == config.steps
        save_checkpoint(
            run_dir, state, trainer, tokenizer, optimizer, scheduler, info, config.logging.keep_last,
            export_dtype=compute_dtype if export else None,
        )  # fmt: skip

    def validate(state: TrainerState) -> TrainerState:
        if not config.eval.every:
            return state
        rows = evaluate_rows(engine, config, "dev", state.step, run_dir, template, info)  # every rank, same rows
        log.eval_rows(rows)
        score = select_score(rows, config.eval)
        log.write(f"step {state.step}: dev {config.eval.select_metric} = {score:.4f}")
        if state.best_value is None or score > state.best_value:
            state = dataclasses.replace(state, best_step=state.step, best_value=score)
        return state

    if checkpoint is None and config.steps > 0:  # steps=0 (a sweep's warm start): the test of the initial model only
        state = validate(state)
        checkpoint_now(state)

    # --- the loop -------------------------------------------------------------------------------------------
    wall_time = state.wall_time_s  # of earlier attempts, up to the checkpoint; this attempt's setup counts too
    for step in range(state.step + 1, config.steps + 1):
        step_start = time.perf_counter()
        reset_peak_memory(info.device)
        collected = collect(engine, problems, prompts, config, step, state.data_position, info, pad_id)
        batch = collected.batch
        row: dict[str, Any] = {"step": step, "time": time.time()} | collected.metrics | dict.fromkeys(POLICY_KEYS)
        row["memory/rollout_peak_gib"] = peak_memory_gib(info.device)
        times = {"time/rollout": collected.time_rollout, "time/grade": collected.time_grade}
        adv_BT = None
        if batch is not None:
            engine.sleep()  # vLLM on CUDA frees its memory for the update; sync_weights wakes it
            start = time.perf_counter()
            reset_peak_memory(info.device)
            logp_model = unwrap(trainer) if not is_sharded(trainer) else trainer
            old_logp_BT = old_entropy_BT = old_stats = None
            match config.old_policy_source:
                case "trained":  # one optimiser step, advantages blind to the old policy: the update's own logp
                    pass
                case "sampler":  # the engine's log-probs, same weights and temperature: no forward
                    old_logp_BT = batch.sampler_logp_BT
                case "forward":
                    old_logp_BT, old_entropy_BT, old_stats = batch_logps(
                        logp_model, batch, config, info, pad_id, config.algorithm.advantages_read_logits
                    )
                case source:
                    assert_never(source)
            ref_logp_BT = batch_logps(reference, batch, config, info, pad_id)[0] if reference is not None else None
            advantages = advantages_with_metrics(
                config.algorithm, batch.rewards_B, old_logp_BT, batch.mask_BT, config.rollout.group_size,
                old_entropy_BT=old_entropy_BT, old_logit_stats=old_stats,
            )  # fmt: skip
            adv_BT = advantages.adv_BT
            row |= {f"algo/{key}": value.item() for key, value in advantages.metrics.items()}
            times["time/logp"] = time.perf_counter() - start
            row["memory/logp_peak_gib"] = peak_memory_gib(info.device)
            start = time.perf_counter()
            reset_peak_memory(info.device)
            try:
                row |= update_policy(
                    trainer, optimizer, scheduler, batch, old_logp_BT, ref_logp_BT, adv_BT, config, info, step, pad_id
                )
            except TrainingDiverged as error:
                last = latest_checkpoint(run_dir)
                raise TrainingDiverged(f"{error}. The last good checkpoint is intact: {last}") from None
            if generator_model is not unwrap(trainer):
                generator_model.load_state_dict(full_state_dict(trainer))
            engine.sync_weights(generator_model)
            times["time/update"] = time.perf_counter() - start
            row["memory/update_peak_gib"] = peak_memory_gib(info.device)
        row.setdefault("optim/lr", scheduler.get_last_lr()[0])
        state = dataclasses.replace(
            state,
            step=step,
            data_position=collected.data_position,
            generated_tokens_total=state.generated_tokens_total + collected.generated_tokens,
            discarded_tokens_total=state.discarded_tokens_total + collected.discarded_tokens,
        )
        times["time/step"] = time.perf_counter() - step_start
        row |= {
            "tokens/generated": collected.generated_tokens,
            "tokens/generated_total": state.generated_tokens_total,
            "tokens/discarded": collected.discarded_tokens,
            "tokens/discarded_total": state.discarded_tokens_total,
        }
        row |= times | {"perf/tokens_per_s": collected.generated_tokens / times["time/step"]}
        log.metrics(row)
        if batch is not None and config.logging.samples_every and step % config.logging.samples_every == 0:
            log.samples(_sample_rows(step, batch, adv_BT, problems, prompts))
        validating = bool(config.eval.every) and (step % config.eval.every == 0 or step == config.steps)
        if validating:
            state = validate(state)
        stop = stop_requested(received, info)  # a signal's name; every rank stops after the same step
        if stop or validating or step == config.steps or step % max(config.logging.checkpoint_every, 1) == 0:
            state = dataclasses.replace(state, wall_time_s=wall_time + time.perf_counter() - start_time)
            checkpoint_now(state)
        if stop and step < config.steps:
            log.write(f"stopping after step {step} on {stop}: checkpoint written, resume with --resume auto")
            log.close()
            raise Stopped(f"stopped after step {step} on {stop}")

    # --- the final evaluation of the best-on-dev checkpoint, then summary.json (last) ----------------------------
    best_step = state.best_step if state.best_step is not None else state.step
    test_engine = engine
    if best_step != state.step:  # every rank loads the best checkpoint (written by rank 0 before a barrier)
        best_dir = best_checkpoint(run_dir)
        if config.rollout.engine == "transformers":
            best = _load_model(best_dir, info, config.model.attention)
            test_engine = _make_engine(config, best_dir, best, tokenizer, info)
        else:  # vLLM keeps its engine and takes the weights in its own dtype: no float32 copy needed
            engine.sync_weights(_load_model(best_dir, info, config.model.attention, config.model.compute_dtype))
    test_rows = evaluate_rows(test_engine, config, "test", best_step, run_dir, template, info)  # every rank
    log.eval_rows(test_rows)
    if info.is_main:
        test: dict[str, dict[str, float]] = {}
        for r in test_rows:
            test.setdefault(r["task"], {})[r["metric"]] = r["value"]
        summary = {
            "steps": state.step,
            "best_step": best_step,
            "generated_tokens": state.generated_tokens_total,
            "wall_time_s": wall_time + time.perf_counter() - start_time,
            "test": test,
        }
        runlog.write_json(run_dir / runlog.SUMMARY, summary)
    log.close()
    barrier(info)
    engine.close()
    return run_dir


def _load_model(path: Path, info: DistInfo, attention: str, dtype: str = "float32") -> torch.nn.Module:
    """A copy of the HF model at ``path`` on this rank's device, float32 unless told (the master weights)."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), attn_implementation=attention)
    return model.to(info.device)


def _make_engine(config: RunConfig, model_dir: Path, model: torch.nn.Module, tokenizer: Any, info: DistInfo) -> Engine:
    if config.rollout.engine == "transformers":
        return TransformersEngine(model, tokenizer, compute_dtype=getattr(torch, config.model.compute_dtype))
    engine = load_engine(
        config.rollout.engine,
        model_dir,
        device=str(info.device),
        dtype=config.model.compute_dtype,
        max_model_len=config.rollout.vllm_max_model_len,
        gpu_memory_utilization=config.rollout.vllm_gpu_memory_utilization,
        seed=config.seed,  # one seed on every rank: a tensor-parallel group must sample alike
        tensor_parallel=config.rollout.vllm_tensor_parallel,
        sleep_mode=config.rollout.vllm_sleep_mode,
        weight_sync_bucket_mb=config.rollout.weight_sync_bucket_mb,
    )
    engine.sync_weights(model)
    return engine


def _sample_rows(
    step: int, batch: Any, adv_BT: torch.Tensor, problems: list[Any], prompts: list[str]
) -> list[dict[str, Any]]:
    """samples.jsonl rows; ``adv`` is the row's mean advantage over its response tokens."""
    adv_B = (adv_BT * batch.mask_BT).sum(-1) / batch.mask_BT.sum(-1).clamp(min=1)
    return [
        {
            "step": step,
            "prompt_id": problems[p].id,
            "prompt": prompts[p],
            "completion": batch.texts[b],
            "reward": batch.rewards_B[b].item(),
            "correct": bool(batch.correct_B[b]),
            "adv": adv_B[b].item(),
            "length": int(batch.lengths_B[b]),
            "truncated": bool(batch.truncated_B[b]),
        }
        for b, p in enumerate(batch.problem_B)
    ]


def _write_config(run_dir: Path, config: RunConfig, meta: dict[str, Any]) -> None:
    """config.json: the resolved config + meta (``_claim_run_dir`` refused a folder made with another config)."""
    runlog.write_json(run_dir / runlog.CONFIG, to_dict(config) | {"meta": run_meta(config, meta)})


def parse_args(argv: list[str] | None = None) -> tuple[RunConfig, str, dict[str, Any]]:
    """(config, resume, meta) from the command line; a bad key or value is a ValueError naming it."""
    parser = one_line_errors(
        argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0], epilog=EPILOG)
    )
    parser.add_argument("--config", help="a resolved config JSON (e.g. a run folder's config.json)")
    parser.add_argument("--profile", choices=sorted(PROFILES), help="start from a named profile (default: tiny)")
    parser.add_argument("--resume", choices=["auto", "never"], default="auto")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    args, overrides = parser.parse_known_args(argv)
    meta: dict[str, Any] = {}
    if args.config is not None:
        path = Path(args.config)
        if not path.is_file():
            raise ValueError(f"--config {path}: no such file")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"--config {path}: not JSON ({error})") from None
        if not isinstance(data, dict):
            raise ValueError(f"--config {path}: not a JSON object (a resolved config, e.g. a run's config.json)")
        meta = data.pop("meta", None) or {}
        config = from_dict(data)
    else:
        config = PROFILES[args.profile or "tiny"]()
    config = apply_overrides(config, overrides)
    return config, args.resume, meta


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        config, resume, meta = parse_args(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if "--print-config" in argv:  # what would run, and nothing else: no run folder, no model
        print(json.dumps(to_dict(config), indent=2))
        return 0
    try:
        run_dir = train(config, resume, meta)
    except TrainingDiverged as error:
        print(f"error: training diverged: {error}", file=sys.stderr)
        return 1
    except (ConfigError, CapacityError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Stopped as error:
        print(f"{error}; resume with --resume auto", file=sys.stderr)
        return EXIT_STOPPED
    except BaseException as error:  # torch.distributed.checkpoint's CheckpointException is a BaseException
        if not runlog.disk_full(error):
            raise
        print(f"error: {runlog.disk_full_message(runlog.run_dir_of(config), error)}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(runlog.final_report(run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
