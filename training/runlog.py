"""The run folder's JSON Lines files, their cut-back on resume, the progress bar and the optional mirrors.

``metrics.jsonl`` (one object per step), ``eval.jsonl`` and ``samples.jsonl`` are appended to and flushed line by
line; non-finite floats are written as ``null`` so every line is strict JSON. On resume each file is cut back to
the checkpoint's step first, so no step is missing or repeated. Only rank 0 writes. TensorBoard and W&B mirror
``metrics.jsonl`` when installed and switched on; analysis never reads them.
"""

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

METRICS, EVAL, SAMPLES, SUMMARY, CONFIG = "metrics.jsonl", "eval.jsonl", "samples.jsonl", "summary.json", "config.json"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def dumps(row: dict[str, Any]) -> str:
    """Strict JSON (NaN and infinities become null)."""
    return json.dumps(_finite(row), allow_nan=False)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cut_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrite ``path`` with only the rows ``keep`` accepts (atomically); a torn last line is dropped. Returns kept."""
    path = Path(path)
    if not path.exists():
        return 0
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written when the process was killed
            continue
    kept = [row for row in rows if keep(row)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(dumps(row) + "\n" for row in kept))
    os.replace(tmp, path)
    return len(kept)


def cut_back(run_dir: Path, step: int) -> None:
    """Drop every row written after checkpoint ``step`` (and every test-split row, written only after training)."""
    run_dir = Path(run_dir)
    cut_jsonl(run_dir / METRICS, lambda row: row["step"] <= step)
    cut_jsonl(run_dir / SAMPLES, lambda row: row["step"] <= step)
    cut_jsonl(run_dir / EVAL, lambda row: row["step"] <= step and row["split"] == "dev")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a JSON file atomically (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(data), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


class RunLog:
    """Appends rows to the run files (rank 0 only; other ranks get a log that writes nothing)."""

    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        total_steps: int,
        start_step: int,
        progress_bar: bool,
        tensorboard: bool = False,
        wandb_project: str | None = None,
        run_name: str = "",
        config: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not (enabled and progress_bar), unit="step")
        self.tensorboard = self.wandb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                self.bar.write("logging.tensorboard: tensorboard is not installed; not mirroring")
        if enabled and wandb_project:
            try:
                import wandb

                self.wandb = wandb.init(project=wandb_project, name=run_name, config=config, resume="allow")
            except ImportError:
                self.bar.write("logging.wandb: wandb is not installed; not mirroring")

    def _append(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not self.enabled or not rows:
            return
        with open(self.run_dir / name, "a") as handle:
            handle.write("".join(dumps(row) + "\n" for row in rows))
            handle.flush()
            os.fsync(handle.fileno())

    def metrics(self, row: dict[str, Any]) -> None:
        self._append(METRICS, [row])
        if not self.enabled:
            return
        self.bar.update(1)
        shown = {"reward": row.get("rollout/reward_mean"), "acc": row.get("rollout/acc_mean")}
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items() if isinstance(v, float)}, refresh=False)
        numbers = {k: v for k, v in row.items() if isinstance(v, int | float) and k != "step"}
        if self.tensorboard is not None:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(key, value, row["step"])
        if self.wandb is not None:
            self.wandb.log(numbers, step=row["step"])

    def eval_rows(self, rows: list[dict[str, Any]]) -> None:
        self._append(EVAL, rows)

    def samples(self, rows: list[dict[str, Any]]) -> None:
        self._append(SAMPLES, rows)

    def write(self, message: str) -> None:
        if self.enabled:
            self.bar.write(message)

    def close(self) -> None:
        self.bar.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
