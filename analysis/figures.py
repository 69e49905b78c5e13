"""Figures, one function each, saved as PNG and PDF: training curves, pass@k curves, ablation bars.

Bands and error bars are the same 95% t-intervals over seeds as the tables (``analysis.stats.mean_ci``). A
training curve is smoothed per run first (a centred rolling mean: each step samples a new batch, so raw values
carry batch noise), then banded over seeds, so a band shows how much seeds differ, not how noisy a step is.
Against generated tokens each run is linearly interpolated onto a shared grid spanning the token range every
seed of the arm covers, so arms are compared at equal cost.
"""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import EngFormatter, MaxNLocator

from analysis.load import FINAL_SPLIT
from analysis.stats import mean_ci
from analysis.tables import AVERAGE, run_scores

# metric, panel title, the range its values can take (a seed band is drawn clipped to it: with 3 seeds a t-interval
# often reaches past 0 or 1, where the quantity cannot go). The first CORE_CURVES panels are always drawn (every
# trainer logs them); a later one only where some arm logged its metric (Miner's, the entropy methods').
CURVES = (
    ("rollout/reward_mean", "reward", (-math.inf, math.inf)),  # shaped rewards (DAPO's overlong term) go below 0
    ("rollout/acc_mean", "accuracy", (0.0, 1.0)),
    ("policy/entropy", "entropy", (0.0, math.inf)),
    ("rollout/response_len_mean", "response length", (0.0, math.inf)),
    ("rollout/frac_all_correct", "all-correct fraction", (0.0, 1.0)),
    ("algo/frac_all_correct_varied", "all-correct, varied responses", (0.0, 1.0)),
    ("algo/calibration_scale", "calibration scale", (0.0, 1.0)),
    ("algo/intrinsic_mass_share", "intrinsic share of advantage mass", (0.0, 1.0)),
    ("policy/cov_selected_frac", "Clip-Cov / KL-Cov selected tokens", (0.0, 1.0)),
    ("policy/entropy_mask_frac", "80/20 mask: kept tokens", (0.0, 1.0)),
    ("algo/entropy_adv_mass_share", "entropy share of advantage mass", (0.0, 1.0)),
)
CORE_CURVES = 5
PANELS_PER_ROW = 4
TOKEN_GRID = 60  # points on the shared generated-token axis
SMOOTHING = 5  # training-curve points averaged in the centred rolling mean


def _save(fig: plt.Figure, path_stem: Path) -> list[Path]:
    paths = [path_stem.with_suffix(".png"), path_stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _palette(arms: list[str]) -> dict[str, tuple]:
    return dict(zip(arms, sns.color_palette("colorblind", len(arms)), strict=True))


def _band(table: pd.DataFrame, bounds: tuple[float, float] = (-math.inf, math.inf)) -> pd.DataFrame:
    """Rows x, columns seeds -> x, mean, low, high (t-interval over the seeds present at each x, clipped to
    ``bounds``, the range the quantity can take)."""
    stats = [mean_ci(row.to_numpy()) for _, row in table.iterrows()]
    mean = np.array([s.mean for s in stats])
    half = np.array([0.0 if math.isnan(s.half_width) else s.half_width for s in stats])
    low, high = np.clip(mean - half, *bounds), np.clip(mean + half, *bounds)
    return pd.DataFrame({"x": table.index.to_numpy(dtype=float), "mean": mean, "low": low, "high": high})


def smooth(values: pd.Series | pd.DataFrame, window: int) -> pd.Series | pd.DataFrame:
    """A centred rolling mean over ``window`` points (fewer at the ends), per column; window <= 1 leaves it as is."""
    if window <= 1:
        return values
    return values.rolling(window, center=True, min_periods=1).mean()


def curve_band(
    curves: pd.DataFrame,
    arm: str,
    metric: str,
    x: str,
    window: int = 1,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> pd.DataFrame:
    """Mean and band over seeds of ``metric`` for ``arm`` against "step" or "generated_tokens", each run's curve
    smoothed over ``window`` of its own points first (``smooth``), the band clipped to ``bounds``."""
    rows = curves[(curves["arm"] == arm) & (curves["metric"] == metric)]
    if rows.empty:
        return pd.DataFrame(columns=["x", "mean", "low", "high"])
    if x == "step":
        return _band(
            smooth(rows.pivot_table(index="step", columns="run", values="value", aggfunc="first"), window), bounds
        )
    runs = [r.sort_values("generated_tokens") for _, r in rows.dropna(subset=["generated_tokens"]).groupby("run")]
    if not runs:
        return pd.DataFrame(columns=["x", "mean", "low", "high"])
    low = max(r["generated_tokens"].min() for r in runs)
    high = min(r["generated_tokens"].max() for r in runs)
    grid = np.linspace(low, high, TOKEN_GRID) if high > low else np.array([low])
    table = pd.DataFrame(
        {i: np.interp(grid, r["generated_tokens"], smooth(r["value"], window)) for i, r in enumerate(runs)},
        index=grid,
    )
    return _band(table, bounds)


def curve_panels(curves: pd.DataFrame, arms: list[str]) -> list[tuple[str, str, tuple[float, float]]]:
    """The CURVES a training-curve figure of ``arms`` draws: the core ones, then those some arm logged."""
    logged = set(curves.loc[curves["arm"].isin(arms), "metric"])
    return [curve for i, curve in enumerate(CURVES) if i < CORE_CURVES or curve[0] in logged]


def plot_training_curves(curves: pd.DataFrame, arms: list[str], x: str, path_stem: Path, title: str) -> list[Path]:
    """One panel per metric of CURVES (the core ones, then those some arm logged), one line per arm with its seed
    band; x is "step" or "generated_tokens"."""
    sns.set_theme(style="whitegrid", context="paper")
    colors = _palette(arms)
    panels = curve_panels(curves, arms)
    rows = math.ceil(len(panels) / PANELS_PER_ROW)
    fig, axes = plt.subplots(rows, PANELS_PER_ROW, figsize=(17, 3.25 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (metric, label, bounds) in zip(axes.flat, panels, strict=False):
        drawn = False
        for arm in arms:
            band = curve_band(curves, arm, metric, x, SMOOTHING, bounds)
            if band.empty:
                continue
            marker = "o" if len(band) == 1 else None  # a single shared point: a line would not show
            ax.plot(band["x"], band["mean"], color=colors[arm], label=arm, linewidth=1.4, marker=marker)
            ax.fill_between(band["x"], band["low"], band["high"], color=colors[arm], alpha=0.2, linewidth=0)
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.set_xticks([])
            ax.set_yticks([])
        elif x == "step":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 120k, not 120000 run into its neighbours
        ax.set_title(label)
        ax.set_xlabel("optimiser step" if x == "step" else "generated tokens")
    handles, labels = next(((h, lab) for h, lab in (a.get_legend_handles_labels() for a in axes.flat) if h), ([], []))
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), bbox_to_anchor=(0.5, -0.04))
    fig.suptitle(
        f"{title}: each run smoothed over {SMOOTHING} points, then mean over seeds and 95% t-interval band "
        "(clipped to the range the quantity can take)"
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, path_stem)


def plot_pass_at_k(evals: pd.DataFrame, arms: list[str], path_stem: Path, title: str) -> list[Path]:
    """pass@k (percent) against k on a log2 axis, one panel per benchmark, mean and 95% t-interval over seeds."""
    sns.set_theme(style="whitegrid", context="paper")
    colors = _palette(arms)
    final = evals[(evals["split"] == FINAL_SPLIT) & evals["metric"].str.match(r"^pass@\d+$")]
    final = final.assign(k=final["metric"].str.slice(5).astype(int))
    benchmarks = sorted(final["benchmark"].unique())
    columns = min(3, max(1, len(benchmarks)))
    rows = math.ceil(len(benchmarks) / columns) if benchmarks else 1
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, benchmark in zip(axes.flat, benchmarks, strict=False):
        for i, arm in enumerate(arms):
            rows_arm = final[(final["benchmark"] == benchmark) & (final["arm"] == arm)]
            if rows_arm.empty:
                continue
            pivot = rows_arm.pivot_table(index="k", columns="run", values="value", aggfunc="first")
            band = _band(100 * pivot, bounds=(0.0, 100.0))
            dodge = 2 ** (0.06 * (i - (len(arms) - 1) / 2))  # arms side by side on the log axis
            ax.errorbar(
                band["x"] * dodge,
                band["mean"],
                yerr=[band["mean"] - band["low"], band["high"] - band["mean"]],
                marker="o",
                markersize=3,
                capsize=2,
                color=colors[arm],
                label=arm,
            )
        ks = sorted(final[final["benchmark"] == benchmark]["k"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_title(benchmark)
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k (%)")
    for ax in list(axes.flat)[len(benchmarks) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), bbox_to_anchor=(0.5, -0.05))
    fig.suptitle(f"{title}: pass@k on the test benchmarks (dev-chosen checkpoint)")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, path_stem)


def plot_ablation_bars(evals: pd.DataFrame, arms: list[str], path_stem: Path, title: str) -> list[Path]:
    """Average Pass@1 and Pass@K over benchmarks per arm: bars at the mean, error bars the 95% t-interval."""
    sns.set_theme(style="whitegrid", context="paper")
    scores = run_scores(evals[evals["arm"].isin(arms)])
    average_columns = [col for col in scores.columns if col[0] == AVERAGE]
    colors = _palette(arms)
    fig, axes = plt.subplots(1, len(average_columns), figsize=(4.5 * len(average_columns), 3.6), squeeze=False)
    for ax, column in zip(axes.flat, average_columns, strict=True):
        stats = [mean_ci(scores.loc[arm, column].to_numpy()) for arm in arms]
        means = [s.mean for s in stats]
        errors = [0.0 if math.isnan(s.half_width) else s.half_width for s in stats]
        positions = np.arange(len(arms))
        ax.bar(positions, means, yerr=errors, capsize=4, color=[colors[a] for a in arms])
        for position, arm in zip(positions, arms, strict=True):  # each seed as a dot over its bar
            values = scores.loc[arm, column].to_numpy()
            ax.scatter(np.full(len(values), position), values, color="black", s=8, zorder=3)
        ax.set_xticks(positions, arms, rotation=20, ha="right")
        ax.set_ylabel(f"average {column[1]} (%)")
        ax.set_title(f"average {column[1]}")
    fig.suptitle(f"{title}: mean over seeds, 95% t-interval; dots are seeds")
    fig.tight_layout()
    return _save(fig, path_stem)
