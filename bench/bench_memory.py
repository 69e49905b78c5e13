"""Peak memory of ``token_logp_and_entropy`` + ``policy_loss``, forward and backward, at a real vocabulary
(V = 151,936, Qwen2/3) and T = 2,048 response tokens, measured against the size of the logits tensor, with the
naive ``log_softmax(logits).gather`` + ``-(p * log p).sum`` version measured in the same run.

How memory is measured (CPU, honest upper bound): every variant runs in a fresh subprocess. The child builds its
inputs first (the logits as a float32 leaf with ``requires_grad``, standing in for the lm_head output, plus the
small B x T tensors) and writes them, reads its resident set size (``VmRSS``), then resets the kernel's
resident-set high-water mark (writing ``5`` to ``/proc/self/clear_refs`` zeroes ``VmHWM``), runs forward and
backward, and reads ``VmHWM`` again. ``extra = VmHWM - VmRSS_before`` is the peak memory the computation added on
top of its inputs. torch's CPU allocator serves large tensors with their own ``mmap`` and unmaps them on free, so
the resident set follows live tensors; allocator slack and any transient buffer inside a torch kernel count too,
which is why this is an upper bound rather than an estimate. (torch has no CPU peak counter;
``torch.profiler(profile_memory=True)`` reports allocations per operator, not the peak of live memory.)

The ratio reported is ``extra / logits bytes``. Backward must produce the gradient of the logits, one tensor of
the logits' size, so 1.0x is the floor for forward + backward; the goal is <= 1.25x. The naive version keeps
log_softmax, softmax and their product alive for backward and allocates their gradients.

The loss layer from the hidden states (``--linear``): ``linear_token_logp_and_entropy`` on N = 8,192 hidden
states of width H = 256 and the V x H output weight, in chunks of 512 tokens, against the full-logits path
(``h @ W.T`` then ``token_logp_and_entropy``, what ``sequence_logp`` does without ``model.logp_chunk_tokens``)
measured in the same run at ``--peer-tokens`` (1,024: the full path at 8,192 tokens would need ~10 GB here; its
ratio to its own logits is size-independent) and the chunked one again at that size. Inputs (hidden, weight) are
not counted; the weight's gradient (V x H) is. These children fix glibc's mmap threshold
(``MALLOC_MMAP_THRESHOLD_=131072``, as bench/bench_plan.py does) so that freed chunks leave the resident set.
Ratio = extra peak / bytes of the full float32 N x V logits; the goal for the chunked path is <= 0.25x.

    python bench/bench_memory.py                  # B=1, T=2048, V=151936; writes bench/results/memory.json
    python bench/bench_memory.py --batch 2        # needs ~2x the memory (naive peaks near 6x the 2.5 GB logits)
    python bench/bench_memory.py --linear         # N=8192 (peer 1024), H=256, chunks of 512: memory_linear.json
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "memory.json"
RESULTS_LINEAR = Path(__file__).resolve().parent / "results" / "memory_linear.json"
VARIANTS = ("naive", "chunked", "chunked_no_grad")
LINEAR_VARIANTS = ("linear_full", "linear_chunked")


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def child(variant: str, batch: int, seq_len: int, vocab: int) -> dict:
    """One measurement in this (fresh) process; prints nothing, returns the numbers."""
    import torch

    from algorithms import Normalizers, get_algorithm, policy_loss, token_logp_and_entropy

    torch.set_num_threads(1)

    def inputs(B: int, T: int, V: int) -> tuple:
        generator = torch.Generator().manual_seed(0)
        logits_BTV = torch.randn(B, T, V, generator=generator).requires_grad_(True)
        tokens_BT = torch.randint(0, V, (B, T), generator=generator)
        mask_BT = torch.arange(T)[None, :] < torch.tensor([T - b for b in range(B)])[:, None]
        old_logp_BT = -torch.rand(B, T, generator=generator) * 12
        adv_BT = torch.randn(B, 1, generator=generator).expand(B, T) * mask_BT
        return logits_BTV, tokens_BT, mask_BT, old_logp_BT, adv_BT

    def run(logits_BTV, tokens_BT, mask_BT, old_logp_BT, adv_BT):
        algo = get_algorithm("grpo", entropy_coef=1e-3)  # gradients through logp and entropy, k3 KL, PPO clip
        norm = Normalizers.count(mask_BT, max_len=mask_BT.shape[1])
        ref_logp_BT, temperature = old_logp_BT - 0.01, 0.7
        if variant == "chunked_no_grad":
            with torch.no_grad():
                logp_BT, entropy_BT = token_logp_and_entropy(logits_BTV, tokens_BT, temperature)
            return policy_loss(algo, logp_BT, old_logp_BT, adv_BT, mask_BT, norm, ref_logp_BT, entropy_BT).loss
        if variant == "chunked":
            logp_BT, entropy_BT = token_logp_and_entropy(logits_BTV, tokens_BT, temperature)
        else:  # naive: autograd over full B x T x V intermediates
            all_logp_BTV = torch.log_softmax(logits_BTV / temperature, dim=-1)
            logp_BT = all_logp_BTV.gather(-1, tokens_BT[..., None]).squeeze(-1)
            entropy_BT = -(all_logp_BTV.exp() * all_logp_BTV).sum(dim=-1)
        loss = policy_loss(algo, logp_BT, old_logp_BT, adv_BT, mask_BT, norm, ref_logp_BT, entropy_BT).loss
        loss.backward()
        return loss

    run(*inputs(1, 4, 16))  # warm-up: one-time library initialisation is not the computation's memory
    tensors = inputs(batch, seq_len, vocab)
    logits_BTV = tensors[0]
    rss_before = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    reset = _status_mb("VmHWM") <= rss_before + 1.0
    start = time.perf_counter()
    loss = run(*tensors)
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    logits_mb = logits_BTV.numel() * logits_BTV.element_size() / 2**20
    return {
        "variant": variant,
        "B": batch,
        "T": seq_len,
        "V": vocab,
        "logits_mb": round(logits_mb, 1),
        "extra_peak_mb": round(peak - rss_before, 1),
        "ratio": round((peak - rss_before) / logits_mb, 3),
        "seconds": round(seconds, 2),
        "loss": float(loss),
        "grad_abs_sum": float(logits_BTV.grad.abs().sum()) if logits_BTV.grad is not None else None,
        "hwm_reset": reset,
    }


def linear_child(variant: str, tokens: int, hidden: int, vocab: int, chunk: int) -> dict:
    """One loss-layer measurement from hidden states in this (fresh) process."""
    import torch

    from algorithms import (
        Normalizers,
        get_algorithm,
        linear_token_logp_and_entropy,
        policy_loss,
        token_logp_and_entropy,
    )

    torch.set_num_threads(1)

    def inputs(N: int, H: int, V: int) -> tuple:
        generator = torch.Generator().manual_seed(0)
        hidden_NH = torch.randn(N, H, generator=generator).requires_grad_(True)
        weight_VH = (torch.randn(V, H, generator=generator) / H**0.5).requires_grad_(True)
        tokens_N = torch.randint(0, V, (N,), generator=generator)
        old_logp_N = -torch.rand(N, generator=generator) * 12
        adv_N = torch.randn(N, generator=generator)
        return hidden_NH, weight_VH, tokens_N, old_logp_N, adv_N

    def run(hidden_NH, weight_VH, tokens_N, old_logp_N, adv_N):
        algo = get_algorithm("grpo", entropy_coef=1e-3)
        mask_1N = torch.ones(1, tokens_N.shape[0], dtype=torch.bool)
        norm = Normalizers.count(mask_1N, max_len=tokens_N.shape[0])
        if variant == "linear_chunked":
            logp_1N, entropy_1N, _stats = linear_token_logp_and_entropy(
                hidden_NH[None], weight_VH, tokens_N[None], 0.7, chunk
            )
        else:  # the full N x V logits, then the chunked log-softmax of algorithms.logprobs
            logp_1N, entropy_1N = token_logp_and_entropy((hidden_NH @ weight_VH.T)[None], tokens_N[None], 0.7)
        old_1N, adv_1N = old_logp_N[None], adv_N[None]
        loss = policy_loss(algo, logp_1N, old_1N, adv_1N, mask_1N, norm, old_1N - 0.01, entropy_1N).loss
        loss.backward()
        return loss

    run(*inputs(4, 8, 16))  # warm-up
    tensors = inputs(tokens, hidden, vocab)
    rss_before = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    loss = run(*tensors)
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    logits_mb = tokens * vocab * 4 / 2**20
    return {
        "variant": variant,
        "N": tokens,
        "H": hidden,
        "V": vocab,
        "chunk": chunk if variant == "linear_chunked" else None,
        "logits_mb": round(logits_mb, 1),
        "extra_peak_mb": round(peak - rss_before, 1),
        "ratio": round((peak - rss_before) / logits_mb, 3),
        "seconds": round(seconds, 2),
        "loss": float(loss),
        "grad_hidden_abs_sum": float(tensors[0].grad.abs().sum()),
        "grad_weight_abs_sum": float(tensors[1].grad.abs().sum()),
    }


def linear_main(args: argparse.Namespace, repo: Path) -> None:
    """The --linear comparison: chunked at --tokens and at --peer-tokens, full logits at --peer-tokens."""
    rows = []
    cases = [("linear_chunked", args.tokens), ("linear_chunked", args.peer_tokens), ("linear_full", args.peer_tokens)]
    for variant, tokens in cases:
        command = [sys.executable, __file__, "--child", variant, "--tokens", str(tokens), "--hidden", str(args.hidden)]
        command += ["--vocab", str(args.vocab), "--chunk", str(args.chunk)]
        env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "131072"}
        done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{variant} failed:\n{done.stderr}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"loss layer from hidden states: H={args.hidden} V={args.vocab}, chunks of {args.chunk} tokens")
    print(f"{'variant':<16} {'N':>6} {'logits MB':>10} {'extra peak MB':>14} {'x logits':>9} {'seconds':>8}")
    for row in rows:
        numbers = f"{row['N']:>6} {row['logits_mb']:>10.0f} {row['extra_peak_mb']:>14.0f} {row['ratio']:>9.3f}"
        print(f"{row['variant']:<16} {numbers} {row['seconds']:>8.1f}")
    big, small, full = rows
    same = abs(small["grad_weight_abs_sum"] / full["grad_weight_abs_sum"] - 1) < 1e-4
    print(f"at N={args.peer_tokens}: chunked / full extra peak {small['extra_peak_mb'] / full['extra_peak_mb']:.3f}; "
          f"same loss and gradient sums: {same}")  # fmt: skip
    print(f"goal chunked <= 0.25x the full logits at N={args.tokens}: "
          f"{'met' if big['ratio'] <= 0.25 else 'NOT met'} ({big['ratio']:.3f}x)")  # fmt: skip
    RESULTS_LINEAR.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_LINEAR.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS_LINEAR.relative_to(repo)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--linear", action="store_true", help="the loss layer from hidden states (see above)")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--peer-tokens", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--child", choices=VARIANTS + LINEAR_VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child in LINEAR_VARIANTS:
        print(json.dumps(linear_child(args.child, args.tokens, args.hidden, args.vocab, args.chunk)))
        return
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.seq_len, args.vocab)))
        return

    repo = Path(__file__).resolve().parents[1]
    if args.linear:
        linear_main(args, repo)
        return
    rows = []
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--child", variant, "--batch", str(args.batch)]
        command += ["--seq-len", str(args.seq_len), "--vocab", str(args.vocab)]
        done = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{variant} failed:\n{done.stderr}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    print(f"B={args.batch} T={args.seq_len} V={args.vocab}: logits {rows[0]['logits_mb']:.0f} MB (float32)")
    print(f"{'variant':<16} {'extra peak MB':>14} {'x logits':>9} {'seconds':>8} {'loss':>12}")
    for row in rows:
        numbers = f"{row['extra_peak_mb']:>14.0f} {row['ratio']:>9.2f} {row['seconds']:>8.1f} {row['loss']:>12.6f}"
        print(f"{row['variant']:<16} {numbers}")
    by_name = {row["variant"]: row for row in rows}
    chunked, naive = by_name["chunked"], by_name["naive"]
    print(f"chunked / naive extra peak: {chunked['extra_peak_mb'] / naive['extra_peak_mb']:.2f}")
    print(f"goal chunked <= 1.25x logits: {'met' if chunked['ratio'] <= 1.25 else 'NOT met'} ({chunked['ratio']:.2f}x)")
    if not all(row["hwm_reset"] for row in rows):
        print("warning: VmHWM reset not honoured; numbers are peaks since process start minus RSS before")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(repo)}")


if __name__ == "__main__":
    main()
