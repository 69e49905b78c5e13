"""lm-eval task definitions for the suite's benchmarks, scored by ``evals.grade`` (the training reward's grader)."""
