"""Prompt templates by name: the same text for training rollouts and evaluation of a model.

``base_boxed``: a plain-text dialogue for base models in the style of DeepSeek-R1-Zero (Guo et al. 2025), with the
final answer in ``\\boxed{}`` instead of ``<answer>`` tags, since the grader reads the last box.
``chat_boxed``: the tokenizer's chat template around the problem and Qwen2.5-Math's instruction (Yang et al. 2024).
``miner_base``: Miner's base-model prompt, character for character (``BASE_MATH_PROMPT`` of pixas/Miner
``verl/utils/dataset/prompt.py`` line 7 for training, ``evaluation/utils/prompt.py`` line 30 for its tests).
``tiny``: the problem and a newline, exactly what the embedded character-level model was fine-tuned on.
"""

from typing import Any, Literal, assert_never, get_args

from evals.problem import Problem

Template = Literal["base_boxed", "chat_boxed", "miner_base", "tiny"]
TEMPLATES: tuple[str, ...] = get_args(Template)

BASE_BOXED = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first reasons step by step, then gives the final answer. "
    "The final answer is placed within \\boxed{{}}.\n"
    "User: {problem}\n"
    "Assistant:"
)
MINER_BASE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The assistant thinks deeply and output the final answer within \\boxed{{}}. \n"
    "User: {problem}\n"
    "Assistant: "
)
CHAT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def render_prompt(name: str, problem: str | Problem, tokenizer: Any = None) -> str:
    """The prompt for ``problem`` (its text, or a Problem) under template ``name``; ``chat_boxed`` needs a tokenizer
    with a chat template (Hugging Face ``apply_chat_template``, generation prompt appended)."""
    text = problem.problem if isinstance(problem, Problem) else problem
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r}; valid: {TEMPLATES}")
    template: Template = name  # type: ignore[assignment]
    match template:
        case "base_boxed":
            return BASE_BOXED.format(problem=text)
        case "miner_base":
            return MINER_BASE.format(problem=text)
        case "chat_boxed":
            if tokenizer is None or not getattr(tokenizer, "chat_template", None):
                raise ValueError(
                    f"template chat_boxed needs a tokenizer with a chat template, got {type(tokenizer).__name__}"
                )
            messages = [{"role": "user", "content": f"{text}\n{CHAT_INSTRUCTION}"}]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        case "tiny":
            return text + "\n"
        case _:
            assert_never(template)
