"""The registry and the dataclass: preset names, one-field diffs from GRPO, and a ValueError for every bad field."""

import dataclasses

import pytest

from algorithms import ALGORITHMS, Algorithm, get_algorithm

PRESETS = [
    "grpo",
    "dr_grpo",
    "dapo",
    "reinforce_pp_baseline",
    "gspo",
    "entropy_bonus",
    "entropy_adv",
    "clip_cov",
    "kl_cov",
    "high_entropy_mask",
    "bapo",
    "ucas",
    "miner",
]


def diff_from_grpo(name: str) -> dict[str, object]:
    grpo = ALGORITHMS["grpo"]
    return {
        f.name: getattr(ALGORITHMS[name], f.name)
        for f in dataclasses.fields(Algorithm)
        if getattr(ALGORITHMS[name], f.name) != getattr(grpo, f.name)
    }


def test_preset_names_are_the_interface():
    assert list(ALGORITHMS) == PRESETS


def test_grpo_is_the_dataclass_default():
    assert ALGORITHMS["grpo"] == Algorithm()
    grpo = Algorithm()
    assert (grpo.advantage, grpo.clip_low, grpo.clip_high) == ("group_zscore", 0.2, 0.2)
    assert (grpo.aggregation, grpo.kl_coef, grpo.kl_estimator) == ("seq_mean_token_mean", 0.04, "k3")


@pytest.mark.parametrize(
    "name, want",
    [
        (
            "dr_grpo",
            {"advantage": "group_center", "aggregation": "seq_mean_token_sum_norm", "kl_coef": 0.0, "dual_clip": None},
        ),
        (
            "dapo",
            {
                "reward": "signed",
                "overlong_buffer": 0.2,
                "drop_uniform_groups": True,
                "clip_high": 0.28,
                "dual_clip": 10.0,
                "aggregation": "token_mean",
                "kl_coef": 0.0,
            },
        ),
        ("reinforce_pp_baseline", {"advantage": "group_center_whiten", "kl_coef": 0.001, "kl_estimator": "k2"}),
        ("gspo", {"ratio_level": "sequence", "clip_low": 3e-4, "clip_high": 4e-4, "kl_coef": 0.0, "dual_clip": None}),
        ("entropy_bonus", {"entropy_coef": 1e-3}),
        ("entropy_adv", {"entropy_adv_alpha": 0.4}),  # kappa 2 is the default
        # the authors' launch script: clip ratios 1 / 1 (bounds [0, 2]); verl's clip_cov loss has no dual clip
        (
            "clip_cov",
            {"cov_method": "clip_cov", "clip_low": 1.0, "clip_high": 1.0, "dual_clip": None}
            | {"aggregation": "token_mean", "kl_coef": 0.0},
        ),
        ("kl_cov", {"cov_method": "kl_cov", "aggregation": "token_mean", "kl_coef": 0.0, "dual_clip": None}),
        ("bapo", {"clip_search": "bapo", "aggregation": "token_mean", "kl_coef": 0.0}),
        ("ucas", {"ucas": "miner_port", "aggregation": "token_mean", "kl_coef": 0.001}),
        ("miner", {"aggregation": "token_mean", "kl_coef": 0.001, "intrinsic": True, "calibration": True}),
    ],
)
def test_presets_differ_from_grpo_in_exactly_these_fields(name: str, want: dict[str, object]):
    assert diff_from_grpo(name) == want


def test_high_entropy_mask_is_dapo_plus_the_mask():
    assert diff_from_grpo("high_entropy_mask") == diff_from_grpo("dapo") | {"entropy_mask_quantile": 0.8}


def test_paper_defaults_of_component_fields():
    algo = Algorithm()
    assert (algo.credit, algo.gamma, algo.norm_level, algo.calibration_lambda) == ("focal", 2.0, "group", 0.0015)
    assert (algo.correct_scale, algo.incorrect_scale, algo.entropy_adv_kappa) == (1.0, 0.0, 2.0)
    assert (algo.clip_cov_ratio, algo.clip_cov_low, algo.clip_cov_high) == (2e-4, 1.0, 5.0)
    assert (algo.kl_cov_ratio, algo.kl_cov_coef, algo.dual_clip) == (2e-3, 1.0, 3.0)  # verl's default dual clip
    assert (algo.bapo_low_max, algo.bapo_low_step, algo.bapo_high_max, algo.bapo_high_step) == (0.95, 0.05, 2.0, 0.1)
    assert (algo.bapo_target, algo.filter_metric, algo.entropy_mask_normaliser) == (0.5, "correct", "kept")


def test_dual_clip_as_each_reference_ran_it():
    dual = {name: algo.dual_clip for name, algo in ALGORITHMS.items()}
    assert dual == {
        "grpo": 3.0,  # verl's vanilla loss, c = 3 (the Miner authors' runs)
        "dr_grpo": None,  # the authors' oat loss
        "dapo": 10.0,  # verl's DAPO recipe
        "reinforce_pp_baseline": 3.0,
        "gspo": None,  # verl's gspo loss
        "entropy_bonus": 3.0,
        "entropy_adv": 3.0,
        "clip_cov": None,  # the script sets 10; verl's clip_cov loss never reads it
        "kl_cov": None,  # verl's kl_cov loss
        "high_entropy_mask": 10.0,  # the 80/20 recipe is DAPO's
        "bapo": 3.0,  # BAPO's policy_loss.py: clip_ratio_c default 3
        "ucas": 3.0,
        "miner": 3.0,
    }


def test_bapo_carries_its_off_policy_schedule():
    from algorithms import PRESET_OPTIM

    assert PRESET_OPTIM == {"bapo": (2, 4)}  # bapo_0.8_0.95_1.2_2.0_target_0.5: 2 PPO epochs x 4 mini-batches


def test_overrides_are_one_field_diffs():
    algo = get_algorithm("miner", credit="uniform", calibration=False)
    assert (algo.credit, algo.calibration, algo.intrinsic) == ("uniform", False, True)
    assert ALGORITHMS["miner"].credit == "focal"  # the registry is untouched


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown algorithm preset 'ppo'.*grpo, dr_grpo"):
        get_algorithm("ppo")


def test_unknown_field_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown Algorithm field 'clip'.*clip_low"):
        get_algorithm("grpo", clip=0.2)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("reward", "ternary", "reward='ternary' is not valid; choose one of: binary, signed"),
        ("advantage", "gae", "advantage='gae' is not valid; choose one of: group_zscore, group_center, group_cen"),
        ("credit", "softmax", "credit='softmax' is not valid; choose one of: focal, uniform, inverse, rank"),
        ("norm_level", "token", "norm_level='token' is not valid; choose one of: group, batch"),
        ("ratio_level", "seq", "ratio_level='seq' is not valid; choose one of: token, sequence"),
        ("cov_method", "cov", "cov_method='cov' is not valid; choose one of: none, clip_cov, kl_cov"),
        ("aggregation", "mean", "aggregation='mean' is not valid; choose one of: token_mean, seq_mean_token_mean"),
        ("kl_estimator", "k4", "kl_estimator='k4' is not valid; choose one of: k1, k2, k3"),
        ("intrinsic", 1, "intrinsic=1 must be a bool"),
        ("calibration", "yes", "calibration='yes' must be a bool"),
        ("drop_uniform_groups", None, "drop_uniform_groups=None must be a bool"),
        ("clip_low", "0.2", "clip_low='0.2' must be a finite number"),
        ("clip_low", -0.1, r"clip_low=-0.1 must be in \[0, 1\]"),
        ("clip_low", 1.5, r"clip_low=1.5 must be in \[0, 1\]"),
        ("filter_metric", "acc", "filter_metric='acc' is not valid; choose one of: correct, reward"),
        ("ucas", "yes", "ucas='yes' is not valid; choose one of: none, miner_port, official"),
        ("clip_search", "dcpo", "clip_search='dcpo' is not valid; choose one of: none, bapo"),
        ("entropy_mask_normaliser", "some", "entropy_mask_normaliser='some' is not valid; choose one of: kept, all"),
        ("bapo_low_step", -0.05, r"bapo_low_step=-0.05 must be >= 0.0"),
        ("bapo_high_step", -0.1, r"bapo_high_step=-0.1 must be >= 0.0"),
        ("bapo_target", -1.0, r"bapo_target=-1.0 must be >= 0.0"),
        ("clip_high", -0.28, r"clip_high=-0.28 must be >= 0.0"),
        ("clip_high", float("nan"), "clip_high=nan must be a finite number"),
        ("dual_clip", 1.0, r"dual_clip=1.0 must be > 1"),
        ("gamma", -1.0, r"gamma=-1.0 must be >= 0.0"),
        ("overlong_buffer", 1.0, r"overlong_buffer=1.0 must be >= 0.0 and < 1.0"),
        ("calibration_lambda", 0.0, r"calibration_lambda=0.0 must be > 0.0"),
        ("correct_scale", -1.0, r"correct_scale=-1.0 must be >= 0.0"),
        ("incorrect_scale", -0.5, r"incorrect_scale=-0.5 must be >= 0.0"),
        ("entropy_adv_alpha", -0.4, r"entropy_adv_alpha=-0.4 must be >= 0.0"),
        ("entropy_adv_kappa", 0.0, r"entropy_adv_kappa=0.0 must be > 0.0"),
        ("clip_cov_ratio", 0.0, r"clip_cov_ratio=0.0 must be > 0.0 and < 1.0"),
        ("clip_cov_low", 6.0, r"clip_cov_low=6.0 must be below clip_cov_high=5.0"),
        ("kl_cov_ratio", 1.5, r"kl_cov_ratio=1.5 must be > 0.0 and < 1.0"),
        ("kl_cov_coef", -1.0, r"kl_cov_coef=-1.0 must be >= 0.0"),
        ("entropy_mask_quantile", 1.0, r"entropy_mask_quantile=1.0 must be >= 0.0 and < 1.0"),
        ("kl_coef", -0.04, r"kl_coef=-0.04 must be >= 0.0"),
        ("entropy_coef", -1e-3, r"entropy_coef=-0.001 must be >= 0.0"),
    ],
)
def test_bad_field_is_a_value_error_naming_it(field: str, value: object, message: str):
    with pytest.raises(ValueError, match=f"^Algorithm.{message}"):
        get_algorithm("grpo", **{field: value})
    with pytest.raises(ValueError, match=f"^Algorithm.{message}"):
        Algorithm(**{field: value})


def test_miner_with_signed_rewards_is_a_value_error():
    with pytest.raises(ValueError, match=r"Algorithm.reward='signed' with intrinsic=True: Miner needs 0/1"):
        get_algorithm("miner", reward="signed")
    with pytest.raises(ValueError, match=r"Algorithm.overlong_buffer=0.2 with intrinsic=True"):
        get_algorithm("miner", overlong_buffer=0.2)
    assert get_algorithm("dapo", intrinsic=False).reward == "signed"  # signed rewards alone are fine


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"bapo_low_max": 1.5}, r"bapo_low_max=1.5 / bapo_high_max=2.0: BAPO raises the bounds from 1 - clip_low"),
        ({"bapo_high_max": 1.1}, r"bapo_high_max=1.1: BAPO raises the bounds"),
        ({"ratio_level": "sequence"}, r"clip_search='bapo' needs ratio_level='token' and cov_method='none'"),
        ({"cov_method": "clip_cov"}, r"clip_search='bapo' needs ratio_level='token' and cov_method='none'"),
    ],
)
def test_bapo_bounds_must_make_sense(overrides: dict, message: str):
    with pytest.raises(ValueError, match=f"^Algorithm.*{message}"):
        get_algorithm("bapo", **overrides)


def test_ucas_shapes_the_group_zscore_only():
    with pytest.raises(ValueError, match=r"^Algorithm.ucas='miner_port' shapes GRPO's group z-score"):
        get_algorithm("ucas", advantage="group_center")
    with pytest.raises(ValueError, match=r"^Algorithm.ucas='official' shapes GRPO's group z-score"):
        get_algorithm("miner", ucas="official")


def test_every_field_has_a_validation_test():
    tested = {
        "reward advantage credit norm_level ratio_level cov_method aggregation kl_estimator intrinsic calibration",
        "drop_uniform_groups clip_low clip_high dual_clip gamma overlong_buffer calibration_lambda correct_scale",
        "incorrect_scale entropy_adv_alpha entropy_adv_kappa clip_cov_ratio clip_cov_low clip_cov_high kl_cov_ratio",
        "kl_cov_coef entropy_mask_quantile kl_coef entropy_coef filter_metric ucas clip_search entropy_mask_normaliser",
        "bapo_low_max bapo_low_step bapo_high_max bapo_high_step bapo_target",
    }
    names = {word for line in tested for word in line.split()}
    assert names == {f.name for f in dataclasses.fields(Algorithm)}
