"""Evaluation: one grader for training rewards and evaluation scores, benchmarks, metrics, the eval runner.

Owns the math grader (last ``\\boxed{}`` + math-verify, with hard timeouts and a cache), the benchmark registry
and loaders (six math benchmarks plus Minerva, and the synthetic reasoning tasks of the embedded default),
prompt templates, unbiased pass@k / avg@n / maj@k, the eval runner and the lm-eval bridge. May import
``rollout`` (to generate); never imports ``training``.
"""

from evals.benchmarks import BENCHMARKS, GROUPS, Benchmark, Protocol, load_benchmark, resolve_benchmarks
from evals.grading import Grade, grade, grade_many
from evals.metrics import benchmark_metrics, grader_audit, maj_at_k, pass_at_k
from evals.problem import Problem
from evals.prompts import render_prompt

__all__ = [
    "BENCHMARKS",
    "GROUPS",
    "Benchmark",
    "Grade",
    "Problem",
    "Protocol",
    "benchmark_metrics",
    "grade",
    "grade_many",
    "grader_audit",
    "load_benchmark",
    "maj_at_k",
    "pass_at_k",
    "render_prompt",
    "resolve_benchmarks",
]
