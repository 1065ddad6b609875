"""The search space: distributions, conditions and the trials they expand to (no Ray)."""
import pytest

from rayrec.models.config import ModelConfig
from rayrec.train.config import TrainConfig
from rayrec.tune.space import apply, base_values, load_space

BASE = base_values(ModelConfig(), TrainConfig())


def space_of(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return load_space(str(path))


def test_grids_combine_and_an_option_applies_only_under_its_condition(tmp_path):
    space = space_of(tmp_path, "model.masking: {grid: [clm, mlm, {value: plm, when: {model.arch: xlnet}}]}\n"
                               "model.arch: {grid: [gpt2, xlnet]}\n")
    trials = space.trials(1, 0, BASE)
    pairs = sorted((t["model.arch"], t["model.masking"]) for t in trials)
    assert pairs == [("gpt2", "clm"), ("gpt2", "mlm"), ("xlnet", "clm"), ("xlnet", "mlm"), ("xlnet", "plm")]


def test_a_conditional_key_is_set_only_where_its_condition_holds(tmp_path):
    space = space_of(tmp_path, "model.masking: {grid: [clm, mlm]}\n"
                               "model.mlm_probability: {uniform: [0.1, 0.4], when: {model.masking: mlm}}\n")
    for t in space.trials(5, 1, BASE):
        if t["model.masking"] == "mlm":
            assert 0.1 <= t["model.mlm_probability"] <= 0.4
        else:
            assert "model.mlm_probability" not in t


def test_divides_keeps_the_values_that_divide_and_draws_are_seeded(tmp_path):
    space = space_of(tmp_path, "model.n_head: {choice: [2, 3, 4, 8], divides: model.d_model}\n"
                               "model.d_model: {choice: [48, 64]}\ntrain.epochs: {randint: [2, 3]}\n"
                               "train.lr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    trials = space.trials(200, 7, BASE)
    assert all(t["model.d_model"] % t["model.n_head"] == 0 for t in trials)
    assert {t["train.epochs"] for t in trials} == {2, 3}                       # both ends included
    assert all(1e-4 <= t["train.lr"] <= 1e-2 for t in trials)
    assert {t["model.n_head"] for t in trials if t["model.d_model"] == 64} == {2, 4, 8}     # never 3
    assert space.trials(200, 7, BASE) == trials and space.trials(200, 8, BASE) != trials
    m, t = apply(ModelConfig(), TrainConfig(), trials[0])
    assert m.n_head == trials[0]["model.n_head"] and t.lr == trials[0]["train.lr"]


@pytest.mark.parametrize("text, expected", [
    ("model.arch: {grid: [gpt2]}\nmodel.arch: {grid: [gru]}\n", "model.arch appears twice"),
    ("model.a: {choice: [1], when: {model.b: 1}}\n", "line 1: model.a: 'a' is not a field"),
    ("model.d_model: {choice: [64], when: {model.n_head: 2}}\nmodel.n_head: {choice: [2], when: {model.d_model: 64}}\n",
     "in a cycle"),
    ("train.lr: {uniform: [0.1]}\n", "line 1: train.lr: uniform needs [low, high]"),
    ("train.lr: {loguniform: [0, 1]}\n", "low > 0"),
    ("train.epochs: {randint: [1.5, 3]}\n", "randint needs integer bounds"),
    ("train.lr: {choice: [1], grid: [2]}\n", "more than one distribution"),
    ("- a\n", "expected a mapping"),
])
def test_a_bad_space_names_what_is_wrong(tmp_path, text, expected):
    with pytest.raises(ValueError, match=expected.replace("[", r"\[").replace("(", r"\(")):
        space_of(tmp_path, text)
