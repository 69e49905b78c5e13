"""The mechanism table: per arm, whether each mechanism an ablation switches off was in play, from metrics.jsonl.

One number per run, then mean ± 95% t-interval over seeds (``analysis.stats.mean_ci``), as for the score tables.
Per-run numbers, each from the metrics.jsonl keys named (a key a run did not log gives a dash):

    groups %      mixed, all-correct, all-wrong: 100 * mean over steps of rollout/frac_{mixed,all_correct,all_wrong}
    all-correct   varied %: 100 * sum_steps algo/frac_all_correct_varied / sum_steps algo/frac_all_correct, the
                  share of all-correct groups whose responses got a nonzero intrinsic advantage (Miner arms)
    calibration   s mean: mean over steps of algo/calibration_scale; s < 1 %: 100 * share of steps with s < 1
    intrinsic     mass %: 100 * mean over steps of algo/intrinsic_mass_share
    entropy       start, end: mean of policy/entropy over the first and the last EDGE_STEPS steps
    entropy terms how much the entropy methods act: Cov tokens %: 100 * mean policy/cov_selected_frac (the tokens
                  Clip-Cov detaches or KL-Cov penalises); 80/20 kept %: 100 * mean policy/entropy_mask_frac (the
                  tokens the high-entropy mask trains); adv mass %: 100 * mean algo/entropy_adv_mass_share (the
                  entropy advantage's share of the advantage mass)
    response      length: mean over steps of rollout/response_len_mean; truncated %: 100 * mean rollout/truncated_frac;
                  overlong %: 100 * mean rollout/overlong_frac (responses whose reward DAPO's overlong shaping cut)
    tokens        generated, discarded: tokens/generated_total and tokens/discarded_total at the last step
    time          loop s: sum over steps of time/step (the training loop; evaluations not counted)
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.stats import mean_ci
from analysis.tables import Cell, Table

EDGE_STEPS = 5  # steps averaged for the entropy at the start and at the end of a run

Steps = pd.DataFrame  # one run's metrics: index step (sorted), one column per metrics.jsonl key


@dataclass(frozen=True)
class Mechanism:
    """One column of the mechanism table: its header, printed decimals, and the per-run number."""

    group: str
    label: str
    digits: int
    value: Callable[[Steps], float]


def _column(steps: Steps, key: str) -> pd.Series:
    return steps[key].dropna() if key in steps else pd.Series(dtype=float)


def _mean(key: str, factor: float = 1.0) -> Callable[[Steps], float]:
    def value(steps: Steps) -> float:
        column = _column(steps, key)
        return factor * float(column.mean()) if len(column) else math.nan

    return value


def _ratio_of_sums(numerator: str, denominator: str) -> Callable[[Steps], float]:
    def value(steps: Steps) -> float:
        total = float(_column(steps, denominator).sum())
        return 100 * float(_column(steps, numerator).sum()) / total if total > 0 else math.nan

    return value


def _share_below_one(steps: Steps) -> float:
    column = _column(steps, "algo/calibration_scale")
    return 100 * float((column < 1).mean()) if len(column) else math.nan


def _edge(key: str, last: bool) -> Callable[[Steps], float]:
    def value(steps: Steps) -> float:
        column = _column(steps, key)
        part = column.iloc[-EDGE_STEPS:] if last else column.iloc[:EDGE_STEPS]
        return float(part.mean()) if len(part) else math.nan

    return value


def _last(key: str) -> Callable[[Steps], float]:
    def value(steps: Steps) -> float:
        column = _column(steps, key)
        return float(column.iloc[-1]) if len(column) else math.nan

    return value


def _total(key: str) -> Callable[[Steps], float]:
    def value(steps: Steps) -> float:
        column = _column(steps, key)
        return float(column.sum()) if len(column) else math.nan

    return value


MECHANISMS = (
    Mechanism("groups %", "mixed", 1, _mean("rollout/frac_mixed", 100)),
    Mechanism("groups %", "all-correct", 1, _mean("rollout/frac_all_correct", 100)),
    Mechanism("groups %", "all-wrong", 1, _mean("rollout/frac_all_wrong", 100)),
    Mechanism("all-correct", "varied %", 1, _ratio_of_sums("algo/frac_all_correct_varied", "algo/frac_all_correct")),
    Mechanism("calibration", "s mean", 3, _mean("algo/calibration_scale")),
    Mechanism("calibration", "s < 1 %", 1, _share_below_one),
    Mechanism("intrinsic", "mass %", 2, _mean("algo/intrinsic_mass_share", 100)),
    Mechanism("entropy", "start", 3, _edge("policy/entropy", last=False)),
    Mechanism("entropy", "end", 3, _edge("policy/entropy", last=True)),
    Mechanism("entropy terms", "Cov tokens %", 3, _mean("policy/cov_selected_frac", 100)),
    Mechanism("entropy terms", "80/20 kept %", 1, _mean("policy/entropy_mask_frac", 100)),
    Mechanism("entropy terms", "adv mass %", 2, _mean("algo/entropy_adv_mass_share", 100)),
    Mechanism("response", "length", 1, _mean("rollout/response_len_mean")),
    Mechanism("response", "truncated %", 1, _mean("rollout/truncated_frac", 100)),
    Mechanism("response", "overlong %", 1, _mean("rollout/overlong_frac", 100)),
    Mechanism("tokens", "generated", 0, _last("tokens/generated_total")),
    Mechanism("tokens", "discarded", 0, _last("tokens/discarded_total")),
    Mechanism("time", "loop s", 0, _total("time/step")),
)


def run_mechanisms(curves: pd.DataFrame) -> pd.DataFrame:
    """One row per run (index arm, seed), one column per Mechanism (group, label), from the tidy curves frame."""
    records = {}
    for (arm, seed), rows in curves.groupby(["arm", "seed"], sort=True):
        steps = rows.pivot_table(index="step", columns="metric", values="value", aggfunc="first").sort_index()
        records[(arm, int(seed))] = {(m.group, m.label): m.value(steps) for m in MECHANISMS}
    frame = pd.DataFrame.from_dict(records, orient="index")
    if frame.empty:
        return frame
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["arm", "seed"])
    return frame


def mechanism_table(curves: pd.DataFrame, arms: list[str], name: str, caption: str) -> Table:
    """Mean ± 95% t-interval over seeds of every Mechanism for ``arms`` (rows, in order); a Mechanism no arm
    logged (a Miner column in a sweep without Miner) is left out."""
    per_run = run_mechanisms(curves[curves["arm"].isin(arms)])
    cells: dict[tuple[str, tuple[str, str]], Cell] = {}
    for mechanism in MECHANISMS:
        column = (mechanism.group, mechanism.label)
        for arm in arms:
            if per_run.empty or arm not in per_run.index.get_level_values(0):
                continue
            values = per_run.loc[arm, column].to_numpy(dtype=float)
            if np.isnan(values).all():
                continue
            s = mean_ci(values)
            cells[(arm, column)] = Cell(s.mean, s.half_width, s.n, digits=mechanism.digits)
    logged = {column for _, column in cells}
    columns = tuple((m.group, m.label) for m in MECHANISMS if (m.group, m.label) in logged)
    return Table(name, caption, "method", tuple(arms), tuple(arms), columns, cells)
