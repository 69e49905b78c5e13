"""Checks on a model folder before anything loads it: one line naming what is missing, not a loader's traceback.

A local Hugging Face model folder needs ``config.json``, weights and tokenizer files. A Hub id (``org/name`` that
is not a local path) is left to the Hub to resolve; check the folder it resolves to.
"""

import json
import re
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model", "qwen.tiktoken")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.pt", "*.pth")
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")  # "name" or "org/name"


def is_hub_id(text: str) -> bool:
    """Is ``text`` spelt like a Hugging Face Hub repository id (``org/name`` or ``name``, no ``.`` / ``..`` parts)?"""
    return bool(HUB_ID.fullmatch(text)) and not text.startswith(".") and ".." not in text


def looks_like_hub_id(path: str | Path) -> bool:
    """A Hub id that is not a local path: the Hub resolves it (so the local checks do not apply)."""
    return is_hub_id(str(path)) and not Path(path).exists()


def check_model_dir(path: str | Path, field: str = "model.path") -> None:
    """A local Hugging Face model folder: it exists and holds config.json, weights and a tokenizer (ValueError)."""
    folder, shown = Path(path), repr(str(path))
    if not folder.exists():
        raise ValueError(f"{field}={shown}: no such folder")
    if not folder.is_dir():
        raise ValueError(f"{field}={shown}: not a folder (a Hugging Face model folder is expected)")
    if not (folder / "config.json").is_file():
        raise ValueError(f"{field}={shown}: no config.json in it (not a Hugging Face model folder)")
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise ValueError(f"{field}={shown}: no weights in it (*.safetensors or pytorch_model*.bin)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"{field}={shown}: no tokenizer in it (one of {', '.join(TOKENIZER_FILES)})")


def has_chat_template(folder: str | Path) -> bool:
    """Does the tokenizer in ``folder`` carry a chat template (``tokenizer_config.json`` or ``chat_template.jinja``)?"""
    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        return bool(json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False
