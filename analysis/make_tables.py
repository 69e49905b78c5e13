"""Make the report: tables (LaTeX, Markdown, CSV), figures (PNG, PDF) and an index.md, from finished runs.

    python analysis/make_tables.py [SWEEP_DIR ...] [--out results/report]

With no directory it reads every sweep under results/. Per sweep: the main table (every arm, the warm start
first, difference from the baseline arm with a paired test; without one, from the warm start), the ablation
table when its sweep.json says ``"kind": "ablation"``, the sensitivity table for ``"sensitivity"``, each followed
by one sentence per comparison (difference, CI, p-value, the difference the seeds could detect); the mechanism
table (``analysis.mechanisms``: which mechanism each arm exercised; a run that trained no step has no row);
training curves against step and generated tokens, pass@k curves, ablation bars. Runs in progress (no
summary.json) are left out and listed.
"""

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a plain file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.figures import plot_ablation_bars, plot_pass_at_k, plot_training_curves
from analysis.load import Results, load_results, save_results
from analysis.mechanisms import EDGE_STEPS, mechanism_table
from analysis.tables import (
    WARM_START,
    Table,
    arm_label,
    build_table,
    comparison_sentences,
    run_scores,
    to_frame,
    to_latex,
    to_markdown,
)

REPO = Path(__file__).resolve().parents[1]
SENTENCES_HEADER = "Average Pass@1, paired over seeds (t-test; detectable: 80% power at alpha 0.05):"


def arms_in_order(results: Results, sweep: str) -> list[str]:
    """The sweep's arms with finished runs, in its plan's order, then any others by name."""
    finished = set(results.evals.loc[results.evals["sweep"] == sweep, "arm"])
    planned = [arm["arm"] for arm in results.sweeps[sweep].get("arms", [])]
    return [a for a in planned if a in finished] + sorted(finished - set(planned))


def _changes_text(changes: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in changes.items()) or "(none)"


def sweep_tables(results: Results, sweep: str, baseline: str) -> list[Table]:
    """The tables of one sweep: main always; ablation or sensitivity as its sweep.json ``kind`` says."""
    info = results.sweeps[sweep]
    arms = arms_in_order(results, sweep)
    scores = run_scores(results.evals[results.evals["sweep"] == sweep])
    # without the baseline arm (a sensitivity sweep), differences are what RL gained over the warm start
    reference = baseline if baseline in arms else (WARM_START if WARM_START in arms else None)
    tables = [
        build_table(
            scores,
            f"{sweep}-main",
            f"{sweep}: Pass@1 and Pass@K (%) on the test benchmarks, mean ± 95% CI over seeds"
            + (
                f"; Δ is the paired difference from {arm_label(reference)} (paired t-test p-value)."
                if reference
                else "."
            ),
            arms,
            row_labels=[arm_label(arm) for arm in arms],
            reference=reference,
        )
    ]
    planned = {arm["arm"]: arm for arm in info.get("arms", [])}
    trained = [arm for arm in arms if arm != WARM_START]  # the ablation and sensitivity tables are about training
    match info.get("kind"):
        case "ablation":
            full = info["reference"]
            text = {a: _changes_text(planned[a].get("changes", {})) for a in trained if a in planned}
            tables.append(
                build_table(
                    scores,
                    f"{sweep}-ablation",
                    f"{sweep}: ablation of {full}; Pass@1 (%) per benchmark, averages, Δ from the full method.",
                    trained,
                    per_benchmark=("Pass@1",),
                    reference=full if full in arms else None,
                    text=text,
                    text_title=f"differs from {full}",
                )
            )
        case "sensitivity":
            parameter = info["parameter"]
            ordered = sorted((a for a in trained if a in planned), key=lambda a: planned[a]["value"])
            tables.append(
                build_table(
                    scores,
                    f"{sweep}-sensitivity",
                    f"{sweep}: sensitivity to {parameter}; Pass@1 (%) per benchmark and averages.",
                    ordered,
                    row_labels=[f"{parameter}={planned[a]['value']}" for a in ordered],
                    per_benchmark=("Pass@1",),
                    reference=info.get("reference") if info.get("reference") in ordered else None,
                )
            )
        case _:  # compare: the main table only
            pass
    return tables


def table_sentences(results: Results, sweep: str, table: Table) -> list[str]:
    """The comparison sentence of every row of ``table`` against its reference (none without a reference)."""
    if table.reference is None:
        return []
    scores = run_scores(results.evals[results.evals["sweep"] == sweep])
    return comparison_sentences(scores, list(table.rows), table.reference)


def sweep_mechanisms(results: Results, sweep: str) -> Table:
    """The mechanism table of one sweep: a row per arm that logged training steps (not the warm start)."""
    curves = results.curves[results.curves["sweep"] == sweep]
    logged = set(curves["arm"])
    return mechanism_table(
        curves,
        [arm for arm in arms_in_order(results, sweep) if arm in logged],
        f"{sweep}-mechanisms",
        f"{sweep}: mechanisms in play, per run then mean ± 95% CI over seeds: shares of group kinds, of "
        f"all-correct groups with a nonzero intrinsic advantage, calibration scale s, intrinsic share of the "
        f"advantage mass, entropy over the first and last {EDGE_STEPS} steps, how much the entropy methods act, "
        f"response length, tokens, time (analysis/mechanisms.py defines each; a column no arm logged is left out).",
    )


def write_table(table: Table, out_dir: Path) -> str:
    """Write <name>.md/.tex/.csv under out_dir/tables; return the Markdown."""
    folder = out_dir / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(table)
    (folder / f"{table.name}.md").write_text(markdown)
    (folder / f"{table.name}.tex").write_text(to_latex(table))
    to_frame(table).to_csv(folder / f"{table.name}.csv", index=False)
    return markdown


def sweep_figures(results: Results, sweep: str, out_dir: Path) -> list[tuple[str, Path]]:
    """Draw the sweep's figures under out_dir/figures; return (caption, PNG path) pairs."""
    folder = out_dir / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    arms = arms_in_order(results, sweep)
    evals = results.evals[results.evals["sweep"] == sweep]
    curves = results.curves[results.curves["sweep"] == sweep]
    plots = [
        (
            "training curves against optimiser step",
            "curves-step",
            lambda stem: plot_training_curves(curves, arms, "step", stem, sweep),
        ),
        (
            "training curves against generated tokens",
            "curves-tokens",
            lambda stem: plot_training_curves(curves, arms, "generated_tokens", stem, sweep),
        ),
        ("pass@k against k", "pass-at-k", lambda stem: plot_pass_at_k(evals, arms, stem, sweep)),
        ("average Pass@1 and Pass@K per arm", "bars", lambda stem: plot_ablation_bars(evals, arms, stem, sweep)),
    ]
    figures = [(caption, draw(folder / f"{sweep}-{suffix}")) for caption, suffix, draw in plots]
    return [(caption, paths[0]) for caption, paths in figures]


def make_report(paths: list[Path], out_dir: Path, baseline: str = "grpo") -> Results:
    """Load, tabulate and plot every sweep under ``paths`` into ``out_dir`` (index.md last); return what it read."""
    results = load_results(paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_results(results, out_dir)
    lines = [
        "# Report",
        "",
        f"From {', '.join(str(p) for p in paths)}: {results.evals['run'].nunique()} finished runs, "
        f"{len(results.in_progress)} in progress. Cells are mean ± 95% t-interval over seeds, in percent.",
        "Tidy data: [runs.csv](runs.csv) ([parquet](runs.parquet)), [curves.csv](curves.csv).",
        "",
    ]
    for sweep, info in results.sweeps.items():
        lines += [f"## {sweep}" + (f" ({info['kind']})" if info.get("kind") else ""), ""]
        if info.get("shared"):
            lines += ["Shared settings: " + _changes_text(info["shared"]), ""]
        if not (results.evals["sweep"] == sweep).any():
            lines += ["No finished runs yet.", ""]
            continue
        for table in sweep_tables(results, sweep, baseline):
            lines += [f"### {table.caption}", "", write_table(table, out_dir)]
            lines += [f"[LaTeX](tables/{table.name}.tex) · [CSV](tables/{table.name}.csv)", ""]
            if table.reference is not None:
                lines += [SENTENCES_HEADER, ""] + [f"- {s}" for s in table_sentences(results, sweep, table)] + [""]
        table = sweep_mechanisms(results, sweep)
        lines += [f"### {table.caption}", "", write_table(table, out_dir)]
        lines += [f"[LaTeX](tables/{table.name}.tex) · [CSV](tables/{table.name}.csv)", ""]
        for caption, png in sweep_figures(results, sweep, out_dir):
            pdf = png.with_suffix(".pdf").relative_to(out_dir)
            lines += [f"### {caption}", "", f"![{caption}]({png.relative_to(out_dir)})", f"[PDF]({pdf})", ""]
    if results.in_progress:
        lines += ["## Runs in progress (left out)", ""] + [f"- {run}" for run in results.in_progress] + [""]
    if results.not_planned:
        lines += ["## Run folders not in their sweep.json (left out)", ""]
        lines += [f"- {run}" for run in results.not_planned] + [""]
    (out_dir / "index.md").write_text("\n".join(lines))
    return results


def check_baseline(results: Results, baseline: str) -> None:
    """A baseline given on the command line must be an arm of every sweep with finished runs (else the Δ column
    would silently vanish)."""
    for sweep in results.sweeps:
        arms = arms_in_order(results, sweep)
        if arms and baseline not in arms:
            raise ValueError(f"--baseline {baseline!r} is not an arm of sweep {sweep} (its arms: {', '.join(arms)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make_tables.py", description=__doc__.split("\n")[0])
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")  # one line
    parser.add_argument("paths", nargs="*", type=Path, help="sweep or run folders (default: results/)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "report")
    parser.add_argument("--baseline", help="arm the main table's Δ column compares against (default: grpo)")
    args = parser.parse_args(argv)
    paths = args.paths or [REPO / "results"]
    try:
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out {args.out}: exists and is not a folder")
        if args.baseline is not None:
            check_baseline(load_results(paths), args.baseline)
        results = make_report(paths, args.out, args.baseline or "grpo")
    except (ValueError, OSError) as error:  # OSError: an --out that cannot be written
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    for run in results.in_progress:
        print(f"in progress, left out: {run}")
    for run in results.not_planned:
        print(f"not in its sweep.json, left out: {run}")
    print(f"report: {args.out / 'index.md'} ({results.evals['run'].nunique()} finished runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
