"""Evaluation: one grader for training rewards and evaluation scores, benchmarks, metrics, the eval runner.

Owns the math grader (last ``\\boxed{}`` + math-verify, with hard timeouts and a cache), the benchmark registry
and loaders (six math benchmarks plus Minerva, and the synthetic reasoning tasks of the embedded default),
prompt templates, unbiased pass@k / avg@n / maj@k, the eval runner and the lm-eval bridge. May import
``rollout`` (to generate); never imports ``training``.
"""

__all__: list[str] = []
