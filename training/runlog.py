"""The run folder's JSON Lines files, their cut-back on resume, the progress bar and the optional mirrors.

``metrics.jsonl`` (one object per step), ``eval.jsonl`` and ``samples.jsonl`` are appended to and flushed line by
line; non-finite floats are written as ``null`` so every line is strict JSON. On resume each file is cut back to
the checkpoint's step first, so no step is missing or repeated. Only rank 0 writes. TensorBoard and W&B mirror
``metrics.jsonl`` when installed (``pip install -e '.[track]'``) and switched on (``--logging.tensorboard=true``:
``<run>/tensorboard/``; ``--logging.wandb=true``: ``<run>/wandb/``, one W&B run per run folder, continued on resume);
analysis never reads them.
"""

import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

METRICS, EVAL, SAMPLES, SUMMARY, CONFIG = "metrics.jsonl", "eval.jsonl", "samples.jsonl", "summary.json", "config.json"
LOCK = "trainer.lock"  # flock-ed by the one trainer writing the folder; holds its pid


REPO = Path(__file__).resolve().parents[1]


def run_dir_of(config: Any) -> Path:
    """Where a run is written: ``out_dir``, else ``results/local/<run_id>`` in this repository (where
    ``analysis/make_tables.py`` looks by default), wherever the command was started from."""
    return Path(config.out_dir) if config.out_dir else REPO / "results" / "local" / config.run_id


class RunLocked(RuntimeError):
    """Another live process holds the run folder's lock."""


def lock_run_dir(run_dir: Path) -> IO[str]:
    """Take the run folder's exclusive lock for this process: one run, one writer.

    An ``fcntl.flock`` on ``<run_dir>/trainer.lock``, held as long as the returned file stays open; the OS
    releases it when the process dies however it dies (kill -9 included), so a stale lock cannot exist. The
    file holds the holder's pid. Raises ``RunLocked`` naming that pid when another process holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK, "a+")  # noqa: SIM115 (held open for the trainer's life)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.close()
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        holder = lock_holder(run_dir)
        raise RunLocked(
            f"{run_dir} is being written by another trainer (pid {holder if holder and holder > 0 else 'unknown'}); "
            "wait for it to end or stop it first"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def remove_unstarted(run_dir: Path) -> None:
    """Remove a run folder this trainer created when its start failed before the step-0 checkpoint."""
    if not any((Path(run_dir) / "checkpoints").glob("step_*")):
        shutil.rmtree(run_dir, ignore_errors=True)


def lock_holder(run_dir: Path) -> int | None:
    """The pid of the live process holding the run folder's lock, or None when nobody holds it.

    Probes with a non-blocking shared lock (released at once), so asking never blocks a trainer."""
    path = Path(run_dir) / LOCK
    if not path.is_file():
        return None
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = handle.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


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


def wandb_run_id(run_dir: Path, run_name: str) -> str:
    """The W&B run id of a run folder: its name and a hash of its absolute path, the same on every attempt, so a
    resumed run continues its W&B run instead of starting a new one."""
    digest = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:8]
    return f"{run_name}-{digest}"


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

                self.wandb = wandb.init(
                    project=wandb_project, name=run_name, config=config, dir=str(self.run_dir),
                    id=wandb_run_id(self.run_dir, run_name), resume="allow",
                )  # fmt: skip
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
            self.tensorboard.flush()  # like metrics.jsonl, each step on disk at once (a crash loses nothing)
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


def disk_full(error: BaseException) -> bool:
    """Did ``error`` (or what caused it) come from a full disk or quota? torch.save reports one as a RuntimeError
    "unexpected pos"; the standard library as OSError ENOSPC / EDQUOT."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(error) for text in ("No space left on device", "Disk quota exceeded", "unexpected pos")):
            return True
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return False


def disk_full_message(run_dir: Path, error: BaseException) -> str:
    """One line for a full disk: where, and the last good checkpoint (kept whole: checkpoints are renamed into
    place only when complete); the half-written temporary folder is removed to give the space back."""
    folder = Path(run_dir) / "checkpoints"
    for partial in folder.glob(".tmp-*") if folder.is_dir() else []:
        shutil.rmtree(partial, ignore_errors=True)
    good = sorted(folder.glob("step_*")) if folder.is_dir() else []
    last = f"the last good checkpoint is intact: {good[-1]}" if good else "no checkpoint was completed"
    return f"no space left on the disk of {run_dir} ({type(error).__name__}); {last}. Free space and rerun to resume"


def final_report(run_dir: Path) -> str:
    """What a finished run prints last: its folder, and its test scores from summary.json (avg@n per task)."""
    path = Path(run_dir) / SUMMARY
    lines = [f"run folder: {run_dir}"]
    if path.is_file():
        summary = json.loads(path.read_text())
        tested = f"best-on-dev checkpoint, step {summary.get('best_step')}" if summary.get("steps") else "initial model"
        lines.append(f"test scores ({tested}):")
        for task, metrics in summary.get("test", {}).items():
            shown = [f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float | int) and "_se" not in k][:4]
            lines.append(f"  {task:24s} " + "  ".join(shown))
    return "\n".join(lines)
