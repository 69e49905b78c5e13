"""Run the main job, time it, and regenerate the README's "main job" section from its results (nothing pasted).

    python analysis/main_job.py [--skip-run] [--sweep DIR] [--report DIR] [--readme FILE] [-- ABLATION_FLAGS ...]

Without ``--skip-run`` it runs the main job as the README gives it, ``python sweeps/ablation.py --components
focal,calib`` (into ``--sweep``, default results/ablation-miner-focal-calib, which must hold no run yet: a rerun
would time the skips), then ``python analysis/make_tables.py`` on it (into ``--report``), and records in
``<sweep>/main_job.json`` the host, the date, the commit, the commands, their wall time and the CPU time of every
process they started (user + system, ``getrusage(RUSAGE_CHILDREN)``). Flags after ``--`` go to ablation.py (e.g.
``-- --seeds 5``) and are shown with the times.

Then, with or without ``--skip-run``, it rewrites the part of the README between the ``main-job`` markers, and only
that part, from the sweep's files through the report's own functions: the recorded host, date and times, the main
table with its comparison sentences, the mechanism table, and the training-curve figure (drawn as make_tables draws
it, copied to docs/figures/ beside the README). The same sweep gives the same section, so a rerun changes nothing.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a plain file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.figures import plot_training_curves
from analysis.load import load_results, read_json
from analysis.make_tables import SENTENCES_HEADER, arms_in_order, sweep_mechanisms, sweep_tables, table_sentences
from analysis.tables import to_markdown

REPO = Path(__file__).resolve().parents[1]
SWEEP = "ablation-miner-focal-calib"  # the folder sweeps/ablation.py names the main job's sweep
JOB = ("sweeps/ablation.py", "--components", "focal,calib")
START, END = "<!-- main-job:start -->", "<!-- main-job:end -->"
TIMING = "main_job.json"  # in the sweep folder: how the main job ran (written by a run, read by --skip-run)
FIGURE = Path("docs") / "figures" / "main-job-curves.png"  # relative to the README's folder


def host() -> str:
    """'<CPU model>, <n> usable cores, <OS> <machine>' of this machine."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        model = found.group(1).strip() if found else model
    return f"{model}, {len(os.sched_getaffinity(0))} usable cores, {platform.system()} {platform.machine()}"


def _commit() -> str:
    """The short sha of the code that ran, '+dirty' when tracked files differ from it; 'unknown' without git."""
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def _shown(path: Path) -> str:
    """A path as the commands show it: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def run_main_job(sweep_dir: Path, report_dir: Path, extra: list[str]) -> dict:
    """Run the ablation into ``sweep_dir``, then make_tables on it into ``report_dir``; return the timing record.

    wall = elapsed seconds; cpu = user + system seconds of every finished descendant (RUSAGE_CHILDREN)."""
    commands = [
        [*JOB, "--out", _shown(sweep_dir), *extra],
        ["analysis/make_tables.py", _shown(sweep_dir), "--out", _shown(report_dir)],
    ]
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    for command in commands:
        done = subprocess.run([sys.executable, *command], cwd=REPO, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"python {' '.join(command)} exited {done.returncode}")
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "host": host(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "commands": ["python " + " ".join(command) for command in commands],
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
    }


def read_timing(sweep_dir: Path) -> dict | None:
    """The sweep's main_job.json (None when absent); a file that is not such a record is a ValueError naming it."""
    path = sweep_dir / TIMING
    if not path.is_file():
        return None
    timing = read_json(path)
    keys = {"host", "date", "commit", "commands", "wall_s", "cpu_s"}
    if not keys <= set(timing):
        raise ValueError(f"{path}: not a timing record (needs {', '.join(sorted(keys))})")
    return timing


def timing_line(timing: dict | None) -> str:
    """One sentence on where, when and how long the main job ran (or that this was not recorded)."""
    if timing is None:
        return f"Host, date and times not recorded ({TIMING} absent: the sweep was not run by this script)."
    wall = f"{int(timing['wall_s'] // 60)} min {timing['wall_s'] % 60:.0f} s"
    commands = " then ".join(f"`{command}`" for command in timing["commands"])
    return (
        f"Measured on {timing['host']}, {timing['date']} (commit {timing['commit']}): {commands} took {wall} wall, "
        f"{timing['cpu_s']:.0f} CPU-seconds."
    )


def section(sweep_dir: Path, figure: Path, readme_dir: Path, timing: dict | None) -> str:
    """The README section between the markers, from the sweep's files; draws the curve figure to ``figure``."""
    results = load_results([sweep_dir])
    if len(results.sweeps) > 1:
        raise ValueError(f"--sweep {sweep_dir}: holds {len(results.sweeps)} sweeps; give the main job's folder")
    if not results.sweeps:
        raise ValueError(f"--sweep {sweep_dir}: holds no run folder")
    (sweep,) = results.sweeps
    if not (results.evals["sweep"] == sweep).any():
        raise ValueError(f"--sweep {sweep_dir}: no finished run (summary.json) to report")
    main = sweep_tables(results, sweep, "grpo")[0]
    sentences = table_sentences(results, sweep, main)
    mechanisms = sweep_mechanisms(results, sweep)
    with tempfile.TemporaryDirectory() as scratch:  # drawn as make_tables draws it; only the PNG is kept
        curves = results.curves[results.curves["sweep"] == sweep]
        png = plot_training_curves(curves, arms_in_order(results, sweep), "step", Path(scratch) / "curves", sweep)[0]
        figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, figure)
    lines = [
        START,
        "<!-- written by `python analysis/main_job.py` from the main job's sweep: rerun it, do not edit -->",
        timing_line(timing),
        "",
        main.caption,
        "",
        to_markdown(main),
        *([SENTENCES_HEADER, "", *[f"- {sentence}" for sentence in sentences], ""] if sentences else []),
        mechanisms.caption,
        "",
        to_markdown(mechanisms),
        f"![training curves of the main job]({figure.relative_to(readme_dir).as_posix()})",
        END,
    ]
    return "\n".join(lines)


def replace_section(text: str, new: str, readme: Path) -> str:
    """``text`` with the part from START to END (markers included) replaced by ``new``; nothing else changes."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"--readme {readme}: needs one {START} line followed by one {END} line")
    before, rest = text.split(START)
    return before + new + rest.split(END)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="main_job.py", description=__doc__.split("\n")[0])
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")  # one line
    parser.add_argument("--skip-run", action="store_true", help="report the sweep already in --sweep; run nothing")
    parser.add_argument("--sweep", type=Path, default=REPO / "results" / SWEEP, help="the main job's sweep folder")
    parser.add_argument("--report", type=Path, default=REPO / "results" / "report", help="make_tables' --out")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md", help="the README to rewrite")
    parser.add_argument("extra", nargs="*", help="after --: flags for sweeps/ablation.py")
    args = parser.parse_args(argv)
    try:  # every input checked before the job runs; the README is written only at the end
        if not args.readme.is_file():
            raise ValueError(f"--readme {args.readme}: no such file")
        text = args.readme.read_text()
        replace_section(text, "", args.readme)
        if args.skip_run:
            if args.extra:
                raise ValueError(f"{' '.join(args.extra)}: flags for ablation.py need a run (drop --skip-run)")
            if not args.sweep.is_dir():
                raise ValueError(f"--sweep {args.sweep}: no such folder")
            timing = read_timing(args.sweep)
        else:
            if args.sweep.is_dir() and any((p / "config.json").is_file() for p in args.sweep.iterdir()):
                raise ValueError(f"--sweep {args.sweep}: already holds runs, whose times a rerun cannot measure; "
                                 "report them with --skip-run, or give a new folder")  # fmt: skip
            if args.sweep.exists() and not args.sweep.is_dir():
                raise ValueError(f"--sweep {args.sweep}: exists and is not a folder")
            timing = run_main_job(args.sweep, args.report, args.extra)
            (args.sweep / TIMING).write_text(json.dumps(timing, indent=1) + "\n")
        readme_dir = args.readme.resolve().parent
        new = replace_section(text, section(args.sweep, readme_dir / FIGURE, readme_dir, timing), args.readme)
        partial = args.readme.with_name(args.readme.name + ".tmp")  # a crash mid-write never truncates the README
        partial.write_text(new)
        partial.replace(args.readme)
    except (ValueError, OSError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # the main job itself failed (its own output says why)
        print(f"{parser.prog}: the main job failed: {error}", file=sys.stderr)
        return 1
    print(f"{args.readme}: main-job section regenerated from {args.sweep}. {timing_line(timing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
