"""Paper tables from the tidy evaluations: main (methods x benchmarks), ablation and sensitivity.

Every cell is a mean over seeds with a 95% t-interval (``analysis.stats.mean_ci``) of one run-level number in
percent: Pass@1 (the ``pass@1`` metric, else ``avg@n``, the same unbiased estimate) or Pass@K (the largest k
every run of that benchmark logged, Chen et al. 2021's unbiased estimator as computed by evals). The Average of a
run is the mean over benchmarks of its own scores, so its interval and the paired test see seed-to-seed spread.
Difference columns are arm minus reference over the seeds both have, with a paired t-test (``paired_diff``).
Best mean of each score column (at the printed precision) is bold. Rendered as Markdown, LaTeX (booktabs), CSV.
"""

import math
import re
from dataclasses import dataclass

import pandas as pd

from analysis.load import FINAL_SPLIT
from analysis.stats import PairedDiff, mean_ci, paired_diff

AVERAGE = "Average"
DIGITS = 1  # printed precision, in percentage points
# The arm every sweep adds for the model before RL (sweeps.spec.WARM_START; analysis reads files, never sweeps/)
WARM_START = "warm_start"
PASS_K = re.compile(r"^pass@(\d+)$")


@dataclass(frozen=True)
class Cell:
    """One table cell: a mean with its CI half width over n seeds; a difference also has a p-value."""

    mean: float
    half_width: float
    n: int
    p_value: float | None = None  # set on difference cells
    bold: bool = False
    text: str | None = None  # a text cell (e.g. what an ablation arm changed) instead of a number
    digits: int = DIGITS  # printed decimals


@dataclass(frozen=True)
class Table:
    """Rows (arms) x columns (group, label); ``cells`` maps (row, column) to a Cell, absent cells print a dash."""

    name: str
    caption: str
    row_title: str
    rows: tuple[str, ...]
    row_labels: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]
    cells: dict[tuple[str, tuple[str, str]], Cell]
    reference: str | None = None  # the arm the difference columns compare against


def arm_label(arm: str) -> str:
    """How tables and sentences name an arm: 'warm start' for the model before RL, else the arm's own name."""
    return "warm start" if arm == WARM_START else arm


def _pass1_metric(metrics: set[str]) -> str | None:
    if "pass@1" in metrics:
        return "pass@1"
    return next((m for m in sorted(metrics) if m.startswith("avg@")), None)


def run_scores(evals: pd.DataFrame) -> pd.DataFrame:
    """Final scores in percent: index (arm, seed), columns (benchmark, "Pass@1" | "Pass@<k>"), plus the Average.

    Pass@K per benchmark uses the largest k that every run of that benchmark logged; the Average's Pass@K is the
    mean of those (labelled "Pass@<k>" when k is the same for all benchmarks, else "Pass@K").
    """
    final = evals[evals["split"] == FINAL_SPLIT]
    columns: dict[tuple[str, str], pd.Series] = {}
    ks = []
    for benchmark, rows in final.groupby("benchmark", sort=True):
        by_run = rows.groupby(["arm", "seed"])["metric"].apply(set)
        common = set.intersection(*by_run)
        pass1 = _pass1_metric(common)
        k_values = [int(m[1]) for m in map(PASS_K.match, common) if m]
        if pass1 is None or not k_values:
            raise ValueError(f"benchmark {benchmark!r}: runs share no pass@1/avg@n and pass@k metrics")
        k = max(k_values)
        ks.append(k)
        table = rows.pivot_table(index=["arm", "seed"], columns="metric", values="value", aggfunc="first")
        columns[(benchmark, "Pass@1")] = 100 * table[pass1]
        columns[(benchmark, f"Pass@{k}")] = 100 * table[f"pass@{k}"]
    scores = pd.DataFrame(columns)
    if scores.empty:
        return scores
    benchmarks = list(dict.fromkeys(b for b, _ in columns))
    first = [columns[(b, "Pass@1")] for b in benchmarks]
    last = [columns[(b, label)] for b, label in columns if label != "Pass@1"]
    k_label = f"Pass@{ks[0]}" if len(set(ks)) == 1 else "Pass@K"
    scores[(AVERAGE, "Pass@1")] = pd.concat(first, axis=1).mean(axis=1, skipna=False)
    scores[(AVERAGE, k_label)] = pd.concat(last, axis=1).mean(axis=1, skipna=False)
    scores.columns = pd.MultiIndex.from_tuples(scores.columns)
    return scores


def _by_seed(scores: pd.DataFrame, arm: str, column: tuple[str, str]) -> dict[int, float]:
    if arm not in scores.index.get_level_values(0):
        return {}
    series = scores.loc[arm, column].dropna()
    return {int(seed): float(v) for seed, v in series.items()}


def build_table(
    scores: pd.DataFrame,
    name: str,
    caption: str,
    arms: list[str],
    row_labels: list[str] | None = None,
    per_benchmark: tuple[str, ...] = ("Pass@1", "Pass@K"),
    reference: str | None = None,
    text: dict[str, str] | None = None,
    text_title: str = "changes",
) -> Table:
    """Mean +- CI cells for ``arms`` (rows, in order), difference columns against ``reference`` (paired test).

    ``per_benchmark`` picks the per-benchmark labels shown ("Pass@K" means that benchmark's largest k); the two
    Average columns are always shown; ``text`` adds a last column of free text per arm.
    """
    missing = [arm for arm in arms if arm not in scores.index.get_level_values(0)]
    if missing:
        raise ValueError(f"table {name}: no finished runs for arm(s) {missing}")
    score_columns = [
        col
        for col in scores.columns
        if col[0] != AVERAGE and (col[1] in per_benchmark or ("Pass@K" in per_benchmark and col[1] != "Pass@1"))
    ]
    score_columns += [col for col in scores.columns if col[0] == AVERAGE]
    cells: dict[tuple[str, tuple[str, str]], Cell] = {}
    for column in score_columns:
        stats = {arm: mean_ci(list(_by_seed(scores, arm, column).values())) for arm in arms}
        best = max(round(s.mean, DIGITS) for s in stats.values() if not math.isnan(s.mean))
        for arm, s in stats.items():
            cells[(arm, column)] = Cell(s.mean, s.half_width, s.n, bold=round(s.mean, DIGITS) == best)
    columns = list(score_columns)
    if reference is not None:
        for column in [col for col in scores.columns if col[0] == AVERAGE]:
            diff_column = (f"Δ vs {arm_label(reference)}", column[1])
            columns.append(diff_column)
            base = _by_seed(scores, reference, column)
            for arm in arms:
                if arm != reference:
                    d = paired_diff(_by_seed(scores, arm, column), base)
                    cells[(arm, diff_column)] = Cell(d.mean, d.half_width, d.n, p_value=d.p_value)
    if text is not None:
        columns.append(("", text_title))
        for arm in arms:
            cells[(arm, ("", text_title))] = Cell(math.nan, math.nan, 0, text=text.get(arm, ""))
    rows, labels = tuple(arms), tuple(row_labels or arms)
    return Table(name, caption, "method", rows, labels, tuple(columns), cells, reference)


def format_cell(cell: Cell | None, plus_minus: str = " ± ") -> str:
    """'45.3 ± 2.1' for a score ('45.3' from one seed); '+1.2 ± 0.8 (p=0.04)' for a difference; '–' if absent."""
    if cell is None or (cell.text is None and math.isnan(cell.mean)):
        return "–"
    if cell.text is not None:
        return cell.text
    sign = "+" if cell.p_value is not None else ""
    out = f"{cell.mean:{sign}.{cell.digits}f}"
    if not math.isnan(cell.half_width):
        out += f"{plus_minus}{cell.half_width:.{cell.digits}f}"
    if cell.p_value is not None and not math.isnan(cell.p_value):
        out += f" (p={cell.p_value:.2g})"
    return out


def to_markdown(table: Table) -> str:
    """A GitHub Markdown table: header '<group> <label>', best cells in **bold**."""
    headers = [table.row_title] + [f"{g} {label}".strip() for g, label in table.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    for row, label in zip(table.rows, table.row_labels, strict=True):
        texts = []
        for column in table.columns:
            cell = table.cells.get((row, column))
            text = format_cell(cell)
            texts.append(f"**{text}**" if cell is not None and cell.bold else text)
        lines.append("| " + " | ".join([label, *texts]) + " |")
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for char in "_%&#$":
        text = text.replace(char, "\\" + char)
    return text.replace("Δ", r"$\Delta$").replace("±", r"$\pm$")


def to_latex(table: Table) -> str:
    """A booktabs table: group headers spanning their labels with \\cmidrule, best cells in \\textbf."""
    groups: list[tuple[str, int]] = []
    for group, _ in table.columns:
        if groups and groups[-1][0] == group:
            groups[-1] = (group, groups[-1][1] + 1)
        else:
            groups.append((group, 1))
    top = [""]
    rules = []
    start = 2
    for group, span in groups:
        top.append(rf"\multicolumn{{{span}}}{{c}}{{{_latex_escape(group)}}}" if span > 1 else _latex_escape(group))
        if group:
            rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_latex_escape(table.caption)}}}",
        rf"\label{{tab:{table.name}}}",
        r"\begin{tabular}{l" + "c" * len(table.columns) + "}",
        r"\toprule",
        " & ".join(top) + r" \\",
        " ".join(rules),
        " & ".join([_latex_escape(table.row_title)] + [_latex_escape(label) for _, label in table.columns]) + r" \\",
        r"\midrule",
    ]
    for row, label in zip(table.rows, table.row_labels, strict=True):
        texts = []
        for column in table.columns:
            cell = table.cells.get((row, column))
            text = _latex_escape(format_cell(cell))
            texts.append(rf"\textbf{{{text}}}" if cell is not None and cell.bold else text)
        lines.append(" & ".join([_latex_escape(label), *texts]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def to_frame(table: Table) -> pd.DataFrame:
    """The long CSV form: one row per cell with every number unrounded."""
    records = []
    for row, label in zip(table.rows, table.row_labels, strict=True):
        for group, column_label in table.columns:
            cell = table.cells.get((row, (group, column_label)))
            if cell is None:
                continue
            records.append(
                {
                    "row": label,
                    "group": group,
                    "column": column_label,
                    "mean": cell.mean,
                    "ci95": cell.half_width,
                    "n": cell.n,
                    "p_value": cell.p_value,
                    "bold": cell.bold,
                    "text": cell.text,
                }
            )
    return pd.DataFrame(records)


def comparison_sentence(arm: str, reference: str, diff: PairedDiff, alpha: float = 0.05) -> str:
    """One plain sentence from a paired difference, e.g. 'miner vs grpo: +1.2 points (95% CI -0.8..3.2, p = 0.12):
    not significant at 3 seeds; detectable difference 3.3 points.' (detectable: 80% power at level ``alpha``)."""
    head = f"{arm} vs {reference}:"
    if diff.n == 0:
        return f"{head} no seed in common, no comparison."
    seeds = f"{diff.n} seed{'s' if diff.n != 1 else ''}"
    if diff.n < 2:
        return f"{head} {diff.mean:+.{DIGITS}f} points from {seeds}: no test (needs two seeds or more)."
    low, high = diff.mean - diff.half_width, diff.mean + diff.half_width
    if math.isnan(diff.p_value):  # every seed's difference is the same: the t statistic is undefined
        return f"{head} {diff.mean:+.{DIGITS}f} points on every one of {seeds} (no spread, so no t-test)."
    verdict = "significant" if diff.p_value < alpha else "not significant"
    return (
        f"{head} {diff.mean:+.{DIGITS}f} points (95% CI {low:.{DIGITS}f}..{high:.{DIGITS}f}, p = {diff.p_value:.2g}): "
        f"{verdict} at {seeds}; detectable difference {diff.detectable:.{DIGITS}f} points."
    )


def comparison_sentences(scores: pd.DataFrame, arms: list[str], reference: str, label: str = "Pass@1") -> list[str]:
    """The sentence of every arm against ``reference`` on the Average ``label`` column (paired over seeds); the
    warm start's is turned round ('grpo vs warm start: ...', reference minus warm start): what RL gained."""
    column = (AVERAGE, label)
    base = _by_seed(scores, reference, column)
    sentences = []
    for arm in arms:
        if arm == reference:
            continue
        own = _by_seed(scores, arm, column)
        if arm == WARM_START:
            sentences.append(comparison_sentence(reference, arm_label(arm), paired_diff(base, own)))
        else:
            sentences.append(comparison_sentence(arm, arm_label(reference), paired_diff(own, base)))
    return sentences
