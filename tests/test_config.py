
import pytest

from rayrec.cli import build_parser, train_configs


def parse(argv):
    return build_parser().parse_args(argv)


def test_yaml_sections_and_flag_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {arch: gpt2, masking: clm, d_model: 32, n_head: 2}\ntrain: {epochs: 3, lr: 0.01}\n")
    model, train = train_configs(parse(["train", "--data", "d", "--out", "o", "--config", str(cfg), "--epochs", "5"]))
    assert (model.arch, model.d_model, train.lr, train.epochs) == ("gpt2", 32, 0.01, 5)


def test_unknown_keys_and_sections_are_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {arch: gpt2, masking: clm, d_modle: 32}\n")
    with pytest.raises(ValueError, match="d_modle"):
        train_configs(parse(["train", "--data", "d", "--out", "o", "--config", str(bad)]))
    bad.write_text("trian: {epochs: 1}\n")
    with pytest.raises(ValueError, match="trian"):
        train_configs(parse(["train", "--data", "d", "--out", "o", "--config", str(bad)]))
