"""analysis/: constructed run folders with known numbers -> the tidy frame, every table cell, the figures.

Three seeds per arm; t_{0.975, 2} = 4.302652729749464, so a half width over 3 seeds is 4.302653 * sd / sqrt(3).
A paired t-test over 3 seeds has df = 2, where the two-sided p-value has the closed form 1 - t / sqrt(t^2 + 2).
"""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from analysis.figures import curve_band
from analysis.load import FINAL_SPLIT, load_results
from analysis.make_tables import make_report, sweep_tables
from analysis.stats import mean_ci, paired_diff
from analysis.tables import run_scores, to_frame, to_latex, to_markdown

T2 = 4.302652729749464  # t_{0.975, df=2}

# arm -> seed -> benchmark -> (pass@1, pass@4); pass@2 is halfway
SCORES = {
    "grpo": {
        0: {"add": (0.40, 0.60), "mul": (0.20, 0.30)},
        1: {"add": (0.50, 0.70), "mul": (0.20, 0.30)},
        2: {"add": (0.60, 0.80), "mul": (0.20, 0.30)},
    },
    "miner": {
        0: {"add": (0.50, 0.70), "mul": (0.20, 0.30)},
        1: {"add": (0.60, 0.80), "mul": (0.30, 0.40)},
        2: {"add": (0.80, 0.90), "mul": (0.40, 0.50)},
    },
    "miner-no_focal": {  # two seeds only: pairs with seeds 0 and 1 of the others
        0: {"add": (0.45, 0.65), "mul": (0.25, 0.35)},
        1: {"add": (0.55, 0.75), "mul": (0.25, 0.35)},
    },
}


def write_run(sweep_dir: Path, arm: str, seed: int, finished: bool = True) -> Path:
    run_dir = sweep_dir / f"{arm}-s{seed}-{seed:06x}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"seed": seed, "meta": {"arm": arm, "run_id": run_dir.name}}))
    slope = (seed + 1) / 1000  # reward = slope * generated tokens, so the seed mean at x is 2x/1000 (seeds 0..2)
    with (run_dir / "metrics.jsonl").open("w") as f:
        for step in range(1, 4):
            tokens = step * 100 * (seed + 1)  # seeds cover [100, 300], [200, 600], [300, 900] tokens
            row = {"step": step, "time": 0.0, "rollout/reward_mean": slope * tokens, "tokens/generated_total": tokens}
            f.write(json.dumps(row) + "\n")
    if not finished:
        return run_dir
    with (run_dir / "eval.jsonl").open("w") as f:
        row = {
            "step": 3,
            "split": "dev",
            "task": "add",
            "metric": "avg@4",
            "value": 0.1,
            "n": 4,
            "generated_tokens": 777,
        }
        f.write(json.dumps(row) + "\n")
    test = {
        benchmark: {"avg@4": p1, "pass@1": p1, "pass@2": (p1 + p4) / 2, "pass@4": p4}
        for benchmark, (p1, p4) in SCORES.get(arm, SCORES["grpo"])[seed].items()  # an arm not in SCORES: grpo's
    }
    summary = {"steps": 3, "best_step": 3, "generated_tokens": 999, "wall_time_s": 1.0, "test": test}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture()
def sweep_dir(tmp_path: Path) -> Path:
    sweep = tmp_path / "results" / "abl"
    for arm, seeds in SCORES.items():
        for seed in seeds:
            write_run(sweep, arm, seed)
    write_run(sweep, "grpo", 3, finished=False)
    plan = {
        "kind": "ablation",
        "reference": "miner",
        "baseline": "grpo",  # written by older sweeps; the report's --baseline decides
        "shared": {"lr": 1e-4},
        "arms": [
            {"arm": "miner", "changes": {}},
            {"arm": "miner-no_focal", "changes": {"credit": "uniform"}},
            {"arm": "grpo", "changes": {"preset": "grpo"}},
        ],
    }
    (sweep / "sweep.json").write_text(json.dumps(plan))
    return sweep


def test_mean_ci_and_paired_diff_by_hand():
    ci = mean_ci([40, 50, 60])  # mean 50, sd 10
    assert ci.mean == 50 and ci.n == 3
    assert ci.half_width == pytest.approx(T2 * 10 / math.sqrt(3), abs=1e-9)
    assert math.isnan(mean_ci([7.0]).half_width)
    d = paired_diff({0: 35, 1: 45, 2: 60, 9: 1}, {0: 30, 1: 35, 2: 40})  # diffs 5, 10, 20; seed 9 unpaired
    # mean 35/3; sd^2 = (6.667^2 + 1.667^2 + 8.333^2)/2 = 58.33; t^2 = (35/3)^2 / (58.33/3) = 7
    assert d.n == 3 and d.mean == pytest.approx(35 / 3)
    assert d.p_value == pytest.approx(1 - math.sqrt(7) / 3, abs=1e-9)
    assert math.isnan(paired_diff({0: 2, 1: 3}, {0: 1, 1: 2}).p_value)  # identical differences: no test


def test_load_keeps_finished_runs_and_lists_the_rest(sweep_dir: Path):
    results = load_results([sweep_dir.parent])
    assert results.in_progress == ("abl/grpo-s3-000003",)
    final = results.evals[results.evals["split"] == FINAL_SPLIT]
    assert final["run"].nunique() == 8  # 3 + 3 + 2 finished runs
    assert len(final) == 8 * 2 * 4  # runs x benchmarks x metrics
    row = final[(final["arm"] == "miner") & (final["seed"] == 2) & (final["benchmark"] == "add")]
    assert row.set_index("metric")["value"].to_dict() == pytest.approx(
        {"avg@4": 0.8, "pass@1": 0.8, "pass@2": 0.85, "pass@4": 0.9}
    )
    assert set(row["step"]) == {3} and set(row["generated_tokens"]) == {777}  # tokens at the chosen step's eval
    assert set(results.curves["arm"]) == set(SCORES)  # the unfinished run's curves are left out too
    assert results.sweeps["abl"]["kind"] == "ablation"


def test_main_table_cell_by_cell(sweep_dir: Path):
    main, _ = sweep_tables(load_results([sweep_dir]), "abl", "grpo")
    assert main.rows == ("miner", "miner-no_focal", "grpo")
    cell = main.cells
    # miner add Pass@1: 50, 60, 80 -> mean 63.33; sd^2 = (13.33^2 + 3.33^2 + 16.67^2)/2 = 233.3
    c = cell[("miner", ("add", "Pass@1"))]
    assert c.mean == pytest.approx(190 / 3) and c.half_width == pytest.approx(T2 * math.sqrt(700 / 3 / 3)) and c.bold
    assert cell[("grpo", ("mul", "Pass@1"))].half_width == pytest.approx(0.0)  # 20, 20, 20
    assert cell[("grpo", ("add", "Pass@4"))].mean == pytest.approx(70.0)
    # averages per seed: grpo (40+20)/2, (50+20)/2, (60+20)/2 = 30, 35, 40; miner 35, 45, 60
    assert cell[("grpo", ("Average", "Pass@1"))].mean == pytest.approx(35.0)
    assert cell[("miner", ("Average", "Pass@1"))].mean == pytest.approx(140 / 3)
    # Average Pass@4: grpo 45, 50, 55; miner 50, 60, 70 -> diffs 5, 10, 15: mean 10, sd 5, t^2 = 100/(25/3) = 12
    d4 = cell[("miner", ("Δ vs grpo", "Pass@4"))]
    assert d4.mean == pytest.approx(10.0) and d4.p_value == pytest.approx(1 - math.sqrt(12 / 14), abs=1e-9)
    d1 = cell[("miner", ("Δ vs grpo", "Pass@1"))]  # diffs 5, 10, 20 -> t^2 = 7
    assert d1.mean == pytest.approx(35 / 3) and d1.p_value == pytest.approx(1 - math.sqrt(7) / 3, abs=1e-9)
    # no_focal pairs on seeds 0, 1: averages 35, 40 vs grpo 30, 35 -> +5, +5 (identical: p undefined)
    dn = cell[("miner-no_focal", ("Δ vs grpo", "Pass@1"))]
    assert (dn.mean, dn.n) == (pytest.approx(5.0), 2) and math.isnan(dn.p_value)
    assert ("grpo", ("Δ vs grpo", "Pass@1")) not in cell
    # rendered: bold best, dash for the baseline's own difference
    rows = {line.split(" | ")[0].strip("| "): line for line in to_markdown(main).splitlines()}
    assert "**63.3 ± 37.9**" in rows["miner"]  # 4.302653 * sqrt(233.33 / 3) = 37.95
    assert "| +11.7 ± 19.0 (p=0.12) |" in rows["miner"]  # 4.302653 * sqrt(58.33 / 3) = 18.97
    assert rows["grpo"].endswith("| – | – |")
    latex = to_latex(main)
    assert r"\toprule" in latex and r"\bottomrule" in latex and r"\textbf{63.3 $\pm$ 37.9}" in latex
    assert r"miner-no\_focal" in latex and r"\multicolumn{2}{c}{add}" in latex
    frame = to_frame(main)
    got = frame[(frame["row"] == "miner") & (frame["group"] == "mul") & (frame["column"] == "Pass@4")]
    assert got["mean"].item() == pytest.approx(40.0)  # 30, 40, 50


def test_main_table_compares_with_the_baseline_given(sweep_dir: Path):
    main, _ = sweep_tables(load_results([sweep_dir]), "abl", "miner")
    assert ("miner", ("Δ vs miner", "Pass@1")) not in main.cells
    assert not any(column[0] == "Δ vs grpo" for column in main.columns)
    # Average Pass@4: grpo 45, 50, 55 against miner 50, 60, 70 -> -5, -10, -15
    assert main.cells[("grpo", ("Δ vs miner", "Pass@4"))].mean == pytest.approx(-10.0)


def test_ablation_table_compares_with_the_full_method(sweep_dir: Path):
    _, ablation = sweep_tables(load_results([sweep_dir]), "abl", "grpo")
    assert ablation.columns[0] == ("add", "Pass@1") and ("add", "Pass@4") not in ablation.columns
    # no_focal vs miner on seeds 0, 1: averages 35, 40 vs 35, 45 -> 0, -5
    d = ablation.cells[("miner-no_focal", ("Δ vs miner", "Pass@1"))]
    assert d.mean == pytest.approx(-2.5) and d.n == 2
    assert ablation.cells[("miner-no_focal", ("", "differs from miner"))].text == "credit=uniform"


def test_curve_bands_by_step_and_at_equal_tokens(sweep_dir: Path):
    curves = load_results([sweep_dir]).curves
    by_step = curve_band(curves, "grpo", "rollout/reward_mean", "step")
    # step 1: seeds have reward slope*tokens = 0.001*100, 0.002*200, 0.003*300 = 0.1, 0.4, 0.9
    assert by_step.loc[by_step["x"] == 1, "mean"].item() == pytest.approx(1.4 / 3)
    by_tokens = curve_band(curves, "grpo", "rollout/reward_mean", "generated_tokens")
    assert by_tokens["x"].min() == 300 and by_tokens["x"].max() == 300  # the only token count all seeds cover
    miner = curve_band(curves, "miner", "rollout/reward_mean", "generated_tokens")
    assert (miner["mean"] - miner["x"] * 2 / 1000).abs().max() < 1e-12  # mean slope (1+2+3)/3 per 1000 tokens


def test_report_writes_tables_figures_and_index(sweep_dir: Path, tmp_path: Path):
    out = tmp_path / "report"
    results = make_report([sweep_dir.parent], out)
    assert results.in_progress == ("abl/grpo-s3-000003",)
    index = (out / "index.md").read_text()
    for name in ("abl-main", "abl-ablation"):
        for suffix in ("md", "tex", "csv"):
            assert (out / "tables" / f"{name}.{suffix}").stat().st_size > 0
    for stem in ("abl-curves-step", "abl-curves-tokens", "abl-pass-at-k", "abl-bars"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 10_000
        assert (out / "figures" / f"{stem}.pdf").is_file()
        assert f"figures/{stem}.png" in index
    assert "abl/grpo-s3-000003" in index and "**63.3 ± 37.9**" in index
    assert "- miner vs grpo: +11.7 points (95% CI -7.3..30.6, p = 0.12)" in index  # under the main table
    assert "- miner-no_focal vs miner: -2.5 points" in index  # under the ablation table
    assert (out / "tables" / "abl-mechanisms.md").is_file() and "mechanisms in play" in index
    assert len(pd.read_parquet(out / "runs.parquet")) == len(pd.read_csv(out / "runs.csv"))


def test_runs_outside_the_sweep_plan_are_left_out(sweep_dir: Path):
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    plan["arms"][0]["runs"] = ["miner-s0-000000"]  # an older plan's runs are not this sweep's arms
    plan["arms"][2]["runs"] = ["grpo-s0-000000", "grpo-s3-000003"]
    (sweep_dir / "sweep.json").write_text(json.dumps(plan))
    results = load_results([sweep_dir])
    assert sorted(results.evals["run"].unique()) == ["grpo-s0-000000", "miner-s0-000000"]
    assert results.in_progress == ("abl/grpo-s3-000003",)
    assert len(results.not_planned) == 8 - 2


def test_smoothing_is_a_centred_rolling_mean():
    from analysis.figures import smooth

    values = pd.Series([0.0, 3, 0, 3, 0, 3])
    # centred windows: (0+3)/2, (0+3+0)/3, (3+0+3)/3, (0+3+0)/3, (3+0+3)/3, (0+3)/2
    assert smooth(values, 3).tolist() == pytest.approx([1.5, 1.0, 2.0, 1.0, 2.0, 1.5])
    assert smooth(values, 1) is values


def test_curve_band_smooths_each_run_before_the_seed_band():
    # two seeds with step noise in antiphase: 0, 3, 0, 3, ... and 3, 0, 3, 0, ...
    values = {"a": [0.0, 3, 0, 3, 0, 3], "b": [3.0, 0, 3, 0, 3, 0]}
    curves = pd.DataFrame(
        [
            {"run": run, "arm": "x", "seed": i, "step": step + 1, "metric": "m", "value": v, "generated_tokens": 0}
            for i, (run, vs) in enumerate(values.items())
            for step, v in enumerate(vs)
        ]
    )
    raw = curve_band(curves, "x", "m", "step")
    # step 3: raw 0 and 3 -> mean 1.5, sd 3/sqrt(2), half width t_{0.975,1} * sd / sqrt(2) = 12.7062 * 1.5
    assert raw.loc[2, "high"] - raw.loc[2, "mean"] == pytest.approx(12.706204736 * 1.5)
    smoothed = curve_band(curves, "x", "m", "step", window=3)
    # step 3 smoothed per run: (3+0+3)/3 = 2 and (0+3+0)/3 = 1 -> mean 1.5, sd 1/sqrt(2), half width 12.7062 * 0.5
    assert smoothed.loc[2, "mean"] == pytest.approx(1.5)
    assert smoothed.loc[2, "high"] - smoothed.loc[2, "mean"] == pytest.approx(12.706204736 * 0.5)
    # step 1: (0+3)/2 and (3+0)/2 agree, so the seeds do not differ there
    assert smoothed.loc[0, "high"] == pytest.approx(smoothed.loc[0, "mean"])


@pytest.mark.parametrize("x", ["step", "generated_tokens"])
def test_curve_band_is_clipped_to_the_range_the_quantity_can_take(x: str):
    # a share in [0, 1] at 0.1 and 0.3 over two seeds: mean 0.2, half width 12.7062 * 0.1 reaches -1.07 and 1.47
    curves = pd.DataFrame(
        {"run": ["r0", "r1"], "arm": "x", "seed": [0, 1], "step": 1, "metric": "m", "value": [0.1, 0.3],
         "generated_tokens": 100}
    )  # fmt: skip
    free = curve_band(curves, "x", "m", x)
    assert (free.loc[0, "low"], free.loc[0, "high"]) == pytest.approx((0.2 - 1.27062047, 0.2 + 1.27062047))
    clipped = curve_band(curves, "x", "m", x, bounds=(0.0, 1.0))
    assert (clipped.loc[0, "low"], clipped.loc[0, "mean"], clipped.loc[0, "high"]) == pytest.approx((0.0, 0.2, 1.0))


def test_power_of_the_paired_test_against_its_integral():
    from scipy import integrate, stats

    from analysis.stats import detectable_difference, paired_power

    # T = (Z + nc) / sqrt(V / df), V ~ chi2(df): P(|T| > c) = E_V[Phi(nc - c sqrt(V/df)) + Phi(-nc - c sqrt(V/df))]
    def by_integral(delta: float, sd: float, n: int) -> float:
        df, nc, c = n - 1, delta * math.sqrt(n) / sd, stats.t.ppf(0.975, n - 1)

        def integrand(v: float) -> float:
            shift = c * math.sqrt(v / df)
            return (stats.norm.cdf(nc - shift) + stats.norm.cdf(-nc - shift)) * stats.chi2.pdf(v, df)

        return integrate.quad(integrand, 0, math.inf)[0]

    for delta, sd, n in ((1.0, 1.0, 3), (3.0, 0.5, 3), (0.7, 1.0, 10)):
        assert paired_power(delta, sd, n) == pytest.approx(by_integral(delta, sd, n), abs=1e-7)
    assert paired_power(0.0, 1.0, 3) == pytest.approx(0.05)  # no true difference: power is the level
    d3 = detectable_difference(1.0, 3)
    assert by_integral(d3, 1.0, 3) == pytest.approx(0.8, abs=1e-7)
    assert d3 == pytest.approx(3.2640, abs=1e-3)  # at 3 seeds: 3.26 standard deviations of the differences
    assert detectable_difference(2.0, 3) == pytest.approx(2 * d3)  # proportional to sd
    # many pairs: the normal approximation (z_0.975 + z_0.8) sd / sqrt(n) = (1.959964 + 0.841621) / sqrt(2000)
    assert detectable_difference(1.0, 2000) == pytest.approx(2.801585 / math.sqrt(2000), rel=1e-3)
    assert detectable_difference(0.0, 3) == 0.0 and math.isnan(detectable_difference(1.0, 1))


def test_comparison_sentences_from_the_statistics(sweep_dir: Path):
    from analysis.tables import comparison_sentences

    scores = run_scores(load_results([sweep_dir]).evals)
    got = comparison_sentences(scores, ["miner", "miner-no_focal", "grpo"], "grpo")
    # miner - grpo averages: 5, 10, 20 -> mean 11.67, half width 18.97, p = 1 - sqrt(7)/3 = 0.118 (see above);
    # sd = sqrt(58.33) = 7.638; detectable = 3.2640 * 7.638 = 24.93
    assert got[0] == (
        "miner vs grpo: +11.7 points (95% CI -7.3..30.6, p = 0.12): not significant at 3 seeds; "
        "detectable difference 24.9 points."
    )
    assert got[1] == "miner-no_focal vs grpo: +5.0 points on every one of 2 seeds (no spread, so no t-test)."
    assert len(got) == 2


def write_mechanism_run(sweep_dir: Path, arm: str, seed: int, miner: bool, extra: dict | None = None) -> None:
    run_dir = write_run(sweep_dir, arm, seed)
    scale = [1.0, 1.0, 0.5, 0.5, 0.25, 1.0]
    with (run_dir / "metrics.jsonl").open("w") as f:
        for step in range(1, 7):
            row = {
                "step": step,
                "rollout/frac_mixed": 0.5,
                "rollout/frac_all_correct": 0.2 + 0.1 * seed,
                "rollout/frac_all_wrong": 0.3 - 0.1 * seed,
                "policy/entropy": 1.0 - 0.1 * step,
                "rollout/response_len_mean": 20.0 + seed,
                "rollout/truncated_frac": 0.05,
                "rollout/overlong_frac": 0.1 * (step % 2),  # every other step: 10 %
                "tokens/generated_total": 100 * step,
                "tokens/discarded_total": 10 * step,
                "time/step": 2.0,
            }
            if miner:
                row |= {
                    "algo/frac_all_correct": 0.2 + 0.1 * seed,
                    "algo/frac_all_correct_varied": 0.1 if step <= 3 else 0.2,
                    "algo/calibration_scale": scale[step - 1],
                    "algo/intrinsic_mass_share": 0.01,
                }
            f.write(json.dumps(row | (extra or {})) + "\n")


def test_mechanism_table_columns_from_a_synthetic_sweep(tmp_path: Path):
    from analysis.mechanisms import mechanism_table

    sweep = tmp_path / "mech"
    for seed in (0, 1):
        write_mechanism_run(sweep, "miner", seed, miner=True)
        write_mechanism_run(sweep, "grpo", seed, miner=False)
    table = mechanism_table(load_results([sweep]).curves, ["miner", "grpo"], "mech", "caption")
    miner = {label: table.cells[("miner", (group, label))] for group, label in table.columns}
    T1 = 12.706204736  # t_{0.975, df=1}
    assert miner["mixed"].mean == pytest.approx(50.0) and miner["mixed"].half_width == pytest.approx(0.0)
    # all-correct 20 % and 30 % -> mean 25, sd 7.071, half width T1 * 7.071 / sqrt(2) = T1 * 5
    assert miner["all-correct"].mean == pytest.approx(25.0) and miner["all-correct"].half_width == pytest.approx(T1 * 5)
    assert miner["all-wrong"].mean == pytest.approx(25.0)
    # varied: (3 * 0.1 + 3 * 0.2) / (6 * 0.2) = 75 %, / (6 * 0.3) = 50 % -> mean 62.5
    assert miner["varied %"].mean == pytest.approx(62.5) and miner["varied %"].half_width == pytest.approx(T1 * 12.5)
    assert miner["s mean"].mean == pytest.approx(4.25 / 6)  # (1 + 1 + 0.5 + 0.5 + 0.25 + 1) / 6
    assert miner["s < 1 %"].mean == pytest.approx(50.0)  # 3 of 6 steps
    assert miner["mass %"].mean == pytest.approx(1.0)
    assert miner["start"].mean == pytest.approx(0.7)  # steps 1-5: 1 - 0.1 * mean(1..5) = 1 - 0.3
    assert miner["end"].mean == pytest.approx(0.6)  # steps 2-6: 1 - 0.1 * 4
    assert miner["length"].mean == pytest.approx(20.5) and miner["truncated %"].mean == pytest.approx(5.0)
    assert miner["overlong %"].mean == pytest.approx(5.0)  # (0.1 + 0 + 0.1 + 0 + 0.1 + 0) / 6
    assert (miner["generated"].mean, miner["discarded"].mean, miner["loop s"].mean) == (600, 60, 12)
    assert ("grpo", ("calibration", "s mean")) not in table.cells  # not logged by GRPO: a dash
    assert table.cells[("grpo", ("groups %", "all-correct"))].mean == pytest.approx(25.0)
    rows = {line.split(" | ")[0].strip("| "): line for line in to_markdown(table).splitlines()}
    assert "| 0.708 ± 0.000 |" in rows["miner"] and "| 600 ± 0 |" in rows["miner"] and "| – |" in rows["grpo"]
    assert not any(group == "entropy terms" for group, _ in table.columns)  # logged by no arm: left out


def test_curve_panels_are_the_core_ones_then_those_an_arm_logged():
    from analysis.figures import CORE_CURVES, CURVES, curve_panels

    def frame(arm_metrics: dict[str, list[str]]) -> pd.DataFrame:
        rows = [(arm, m) for arm, metrics in arm_metrics.items() for m in metrics]
        return pd.DataFrame(rows, columns=["arm", "metric"])

    core = [metric for metric, _, _ in CURVES[:CORE_CURVES]]
    cov, scale = "policy/cov_selected_frac", "algo/calibration_scale"
    compare = frame({"grpo": core, "clip_cov": [*core, cov], "miner": [scale]})
    assert [m for m, _, _ in curve_panels(compare, ["grpo", "clip_cov"])] == [*core, cov]
    assert scale in [m for m, _, _ in curve_panels(compare, ["grpo", "miner"])]
    assert [m for m, _, _ in curve_panels(frame({"grpo": []}), ["grpo"])] == core  # the core ones, even unlogged


def test_mechanism_table_shows_how_much_the_entropy_methods_act(tmp_path: Path):
    from analysis.mechanisms import mechanism_table

    sweep = tmp_path / "mech"
    for seed in (0, 1):
        write_mechanism_run(sweep, "grpo", seed, miner=False)
        write_mechanism_run(sweep, "clip_cov", seed, miner=False, extra={"policy/cov_selected_frac": 2e-4})
        write_mechanism_run(sweep, "high_entropy_mask", seed, miner=False, extra={"policy/entropy_mask_frac": 0.2})
        write_mechanism_run(sweep, "entropy_adv", seed, miner=False, extra={"algo/entropy_adv_mass_share": 0.01 * seed})
    arms = ["grpo", "clip_cov", "high_entropy_mask", "entropy_adv"]
    table = mechanism_table(load_results([sweep]).curves, arms, "mech", "caption")
    terms = [label for group, label in table.columns if group == "entropy terms"]
    assert terms == ["Cov tokens %", "80/20 kept %", "adv mass %"]
    assert not any(group in ("calibration", "intrinsic") for group, _ in table.columns)  # no Miner arm: left out
    assert table.cells[("clip_cov", ("entropy terms", "Cov tokens %"))].mean == pytest.approx(0.02)
    assert table.cells[("high_entropy_mask", ("entropy terms", "80/20 kept %"))].mean == pytest.approx(20.0)
    assert table.cells[("entropy_adv", ("entropy terms", "adv mass %"))].mean == pytest.approx(0.5)  # 0 % and 1 %
    assert ("grpo", ("entropy terms", "Cov tokens %")) not in table.cells


# the model before RL, tested per seed: (add pass@1, pass@4), (mul pass@1, pass@4); averages 20, 20, 25
WARM = {0: ((0.30, 0.50), (0.10, 0.20)), 1: ((0.30, 0.50), (0.10, 0.20)), 2: ((0.40, 0.60), (0.10, 0.20))}


def add_warm_start(sweep_dir: Path) -> None:
    """Warm-start run folders as the trainer writes them with steps=0: no metrics.jsonl, the test at step 0."""
    for seed, ((add1, add4), (mul1, mul4)) in WARM.items():
        run_dir = sweep_dir / f"grpo-warm_start-s{seed}-{seed:06x}"
        run_dir.mkdir()
        (run_dir / "config.json").write_text(json.dumps({"seed": seed, "steps": 0, "meta": {"arm": "warm_start"}}))
        test = {
            name: {"avg@4": p1, "pass@1": p1, "pass@2": (p1 + p4) / 2, "pass@4": p4}
            for name, (p1, p4) in (("add", (add1, add4)), ("mul", (mul1, mul4)))
        }
        summary = {"steps": 0, "best_step": 0, "generated_tokens": 0, "wall_time_s": 1.0, "test": test}
        (run_dir / "summary.json").write_text(json.dumps(summary))
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    plan["arms"].insert(0, {"arm": "warm_start", "value": None, "changes": {"steps": 0}})
    (sweep_dir / "sweep.json").write_text(json.dumps(plan))


def test_warm_start_row_sentence_and_no_mechanism_row(sweep_dir: Path, tmp_path: Path):
    add_warm_start(sweep_dir)
    results = load_results([sweep_dir])
    main, ablation = sweep_tables(results, "abl", "grpo")
    assert main.rows == ("warm_start", "miner", "miner-no_focal", "grpo") and main.row_labels[0] == "warm start"
    assert "warm_start" not in ablation.rows  # the ablation table is about the method's components
    # Average Pass@1 of the warm start: (30+10)/2, (30+10)/2, (40+10)/2 = 20, 20, 25 -> mean 65/3
    assert main.cells[("warm_start", ("Average", "Pass@1"))].mean == pytest.approx(65 / 3)
    # its Δ vs grpo (30, 35, 40): -10, -15, -15
    assert main.cells[("warm_start", ("Δ vs grpo", "Pass@1"))].mean == pytest.approx(-40 / 3)
    out = tmp_path / "report"
    make_report([sweep_dir], out)
    index = (out / "index.md").read_text()
    # grpo - warm start per seed: 10, 15, 15 -> mean 13.33, sd = sqrt((3.333^2 + 1.667^2 * 2) / 2) = 2.887;
    # t = 13.33 / (2.887 / sqrt 3) = 8, p = 1 - 8 / sqrt(66) = 0.0153; half width 4.302653 * 1.6667 = 7.17;
    # detectable 3.2640 * 2.887 = 9.42
    sentence = (
        "- grpo vs warm start: +13.3 points (95% CI 6.2..20.5, p = 0.015): significant at 3 seeds; "
        "detectable difference 9.4 points."
    )
    assert sentence in index and "warm_start vs grpo" not in index
    # add Pass@1 30, 30, 40: mean 33.3, sd 5.774, half width 4.302653 * 5.774 / sqrt 3 = 14.3
    assert "| warm start | 33.3 ± 14.3 |" in (out / "tables" / "abl-main.md").read_text()
    mechanisms = (out / "tables" / "abl-mechanisms.md").read_text()
    assert "| miner |" in mechanisms and "warm" not in mechanisms  # no training step, no mechanism row
    # a sweep without the baseline arm (sensitivity) compares every arm with the warm start
    main, _ = sweep_tables(results, "abl", "absent")
    assert main.cells[("miner", ("Δ vs warm start", "Pass@1"))].mean == pytest.approx(140 / 3 - 65 / 3)


def test_main_job_section_from_a_synthetic_sweep_is_idempotent(sweep_dir: Path, tmp_path: Path):
    from analysis import main_job

    add_warm_start(sweep_dir)
    readme = tmp_path / "README.md"
    head, tail = "# Title\n\nbefore\n\n", "\n\n## Next\nafter\n"
    readme.write_text(f"{head}{main_job.START}\nold text\n{main_job.END}{tail}")
    argv = ["--skip-run", "--sweep", str(sweep_dir), "--readme", str(readme)]
    assert main_job.main(argv) == 0
    text = readme.read_text()
    assert text.startswith(head + main_job.START) and text.endswith(main_job.END + tail)  # nothing else changed
    assert "old text" not in text and "Host, date and times not recorded (main_job.json absent" in text
    assert "| warm start | 33.3 ± 14.3 |" in text  # the main table, as in test_warm_start_row_sentence...
    assert "- grpo vs warm start: +13.3 points (95% CI 6.2..20.5, p = 0.015)" in text
    assert "- miner vs grpo: +11.7 points (95% CI -7.3..30.6, p = 0.12)" in text
    mechanisms = text.split("mechanisms in play")[1]
    assert "| miner |" in mechanisms and "| warm start |" not in mechanisms
    assert "![training curves of the main job](docs/figures/main-job-curves.png)" in text
    assert (tmp_path / "docs" / "figures" / "main-job-curves.png").stat().st_size > 10_000
    timing = {
        "host": "a 2-core test host",
        "date": "2026-12-04 18:00 UTC",
        "commit": "abc1234",
        "commands": ["python sweeps/ablation.py --components focal,calib", "python analysis/make_tables.py"],
        "wall_s": 325.4,  # 5 min 25 s
        "cpu_s": 573.2,
    }
    (sweep_dir / "main_job.json").write_text(json.dumps(timing))
    assert main_job.main(argv) == 0
    once = readme.read_text()
    assert main_job.main(argv) == 0 and readme.read_text() == once  # the same sweep gives the same README
    assert (
        "Measured on a 2-core test host, 2026-12-04 18:00 UTC (commit abc1234): `python sweeps/ablation.py "
        "--components focal,calib` then `python analysis/make_tables.py` took 5 min 25 s wall, 573 CPU-seconds."
    ) in once
    assert once.replace(main_job.timing_line(timing), main_job.timing_line(None)) == text  # only the timing differs
