"""lm-eval hooks of the suite's tasks: documents from ``evals.load_benchmark``, prompts from ``evals.prompts``,
scores from ``evals.grade_many`` and ``evals.metrics`` (the grader of the training reward).

The data directory is resolved when lm-eval loads a task, never written into the YAML: ``--metadata
'{"data_dir": "DIR"}'``, else ``$RLABLATE_DATA_DIR``, else the Hugging Face Hub.
"""

from typing import Any

from evals.benchmarks import load_benchmark
from evals.grading import grade_many
from evals.metrics import maj_at_k, pass_at_k, pass_ks
from evals.prompts import CHAT_INSTRUCTION, render_prompt


def load_docs(benchmark: str, split: str = "test", data_dir: str | None = None, **_lm_eval_metadata: Any) -> Any:
    """lm-eval ``custom_dataset``: a ``DatasetDict`` with one split of (id, problem, answer) rows.

    lm-eval calls it with the task's metadata (version, model arguments, ...) as keywords too: those are ignored.
    """
    import datasets

    problems = load_benchmark(benchmark, data_dir=data_dir, split=split)
    rows = [{"id": p.id, "problem": p.problem, "answer": p.answer} for p in problems]
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})


def base_boxed_prompt(doc: dict[str, Any]) -> str:
    return render_prompt("base_boxed", doc["problem"])


def chat_boxed_prompt(doc: dict[str, Any]) -> str:
    """The user turn of ``chat_boxed``: lm-eval wraps it in the chat template under ``--apply_chat_template``."""
    return f"{doc['problem']}\n{CHAT_INSTRUCTION}"


def tiny_prompt(doc: dict[str, Any]) -> str:
    return render_prompt("tiny", doc["problem"])


def keep_all(responses: list[list[str]], docs: list[dict[str, Any]]) -> list[list[str]]:
    """A filter that keeps every sample (lm-eval's default keeps the first of ``repeats``)."""
    return responses


def process_results(doc: dict[str, Any], results: list[Any]) -> dict[str, float]:
    """Grade the n samples of one problem: this problem's avg@n, pass@k (k = 1, 2, 4, ... <= n) and maj@n.

    lm-eval's ``mean`` over problems of these values is the benchmark's metric (the same formulas as
    ``evals.metrics.benchmark_metrics``).
    """
    responses = results[0] if isinstance(results[0], list) else list(results)
    grades = grade_many([(response, doc["answer"]) for response in responses])
    n, c = len(grades), sum(g.correct for g in grades)
    scores = {"avg@n": c / n} | {f"pass@{k}": pass_at_k(n, c, k) for k in pass_ks(n)}
    scores["maj@n"] = float(maj_at_k([g.extracted for g in grades], [g.correct for g in grades], n))
    return scores
