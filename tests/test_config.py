
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


def _fields_of(cls, kind):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if hints[f.name] is kind]


def _sections():
    from rayrec.etl import EtlConfig
    from rayrec.models.config import ModelConfig
    from rayrec.serve.config import ServeConfig
    from rayrec.train.config import TrainConfig

    return [("etl", EtlConfig), ("model", ModelConfig), ("train", TrainConfig), ("serve", ServeConfig)]


@pytest.mark.parametrize("section,cls", _sections(), ids=[s for s, _ in _sections()])
def test_every_key_takes_only_values_of_its_type(section, cls):
    from rayrec.config_io import from_dict

    bools, ints = _fields_of(cls, bool), _fields_of(cls, int)
    assert bools or ints
    for name in bools:                  # a non-empty string is truthy: `maybe` must not mean yes
        with pytest.raises(ValueError, match=rf"^cfg.yaml: {section}\.{name}: expected true or false, got 'maybe'$"):
            from_dict(cls, {name: "maybe"}, f"cfg.yaml: {section}")
        with pytest.raises(ValueError, match=rf"{section}\.{name}: expected true or false"):
            from_dict(cls, {name: 1}, f"cfg.yaml: {section}")
    for name in ints:
        for bad in ("many", 2.5, True):
            with pytest.raises(ValueError, match=rf"{section}\.{name}: expected an integer"):
                from_dict(cls, {name: bad}, f"cfg.yaml: {section}")


def test_yaml_numbers_read_as_text_become_floats_and_bad_values_name_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {normalize: true, temperature: 1e-1}\ntrain: {lr: 1e-3, threads_per_worker: 2}\n")
    model, train = train_configs(parse(["train", "--data", "d", "--out", "o", "--config", str(cfg)]))
    assert (model.normalize, model.temperature, train.lr, train.threads_per_worker) == (True, 0.1, 0.001, 2)
    cfg.write_text("model: {tie_weights: maybe}\n")
    with pytest.raises(ValueError, match=r"c.yaml: model.tie_weights: expected true or false, got 'maybe'"):
        train_configs(parse(["train", "--data", "d", "--out", "o", "--config", str(cfg)]))
    cfg.write_text("model: {features: category}\n")
    with pytest.raises(ValueError, match=r"model.features: expected a list \(a string each\), got 'category'"):
        train_configs(parse(["train", "--data", "d", "--out", "o", "--config", str(cfg)]))
    cfg.write_text("train: {lr: fast}\n")
    with pytest.raises(ValueError, match=r"train.lr: expected a number, got 'fast'"):
        train_configs(parse(["train", "--data", "d", "--out", "o", "--config", str(cfg)]))


@pytest.mark.parametrize("section,key,value,expected", [
    ("model", "dropout", 1.5, r"\[0, 1\)"),
    ("model", "input_dropout", -0.1, r"\[0, 1\)"),
    ("model", "d_model", 0, ">= 1"),
    ("model", "n_head", 0, ">= 1"),
    ("model", "max_len", 1, ">= 2"),
    ("model", "input_mlp", [64, 0], ">= 1"),
    ("model", "embedding_init_std", 0, "> 0"),
    ("model", "next_item_weight", -1, ">= 0"),
    ("train", "lr", 0, "> 0"),
    ("train", "weight_decay", -0.1, ">= 0"),
    ("train", "eval_batch_size", 0, ">= 1"),
    ("train", "cosine_cycles_per_epoch", -1, "> 0"),
])
def test_a_value_out_of_range_names_the_file_and_the_key(tmp_path, section, key, value, expected):
    import yaml

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({section: {key: value}}))
    with pytest.raises(ValueError, match=rf"bad.yaml: {section}.{key}.*{expected}") as e:
        train_configs(parse(["train", "--data", "d", "--out", "o", "--config", str(cfg)]))
    assert str(value) in str(e.value) or key in ("input_mlp",)


def test_a_space_value_of_the_wrong_type_names_its_line(tmp_path):
    from rayrec.tune.space import load_space

    space = tmp_path / "space.yaml"
    space.write_text("model.d_model: {choice: [32, 64]}\nmodel.normalize: {choice: [false, maybe]}\n")
    with pytest.raises(ValueError, match=r"space.yaml: line 2: model.normalize: expected true or false, got 'maybe'"):
        load_space(str(space))
    space.write_text("train.lr: 1e-3\nmodel.normalize: {choice: [false, true]}\n")
    params = {p.key: [o.value for o in p.options] for p in load_space(str(space)).params}
    assert params == {"train.lr": [0.001], "model.normalize": [False, True]}


def test_a_section_or_an_op_parameter_of_the_wrong_shape_names_it(tmp_path):
    from rayrec.etl.spec import workflow_from_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: [gpt2, clm]\n")
    with pytest.raises(ValueError, match=r"c.yaml: model: expected a mapping of options \(KEY: value\), got \['gpt2'"):
        train_configs(parse(["train", "--data", "d", "--out", "o", "--config", str(cfg)]))
    ops = [{"op": "Categorify", "columns": "item"}, {"op": "ListSlice", "columns": ["item"], "start": "last"}]
    with pytest.raises(ValueError, match=r"^w.yaml: ops\[1\]: op ListSlice: start: expected an integer, got 'last'$"):
        workflow_from_config({"ops": ops}, "w.yaml")
    ops[1]["start"] = -5                  # and a single column may be written without a list
    flow = workflow_from_config({"ops": ops}, "w.yaml")
    assert flow.ops[0].columns == ["item"] and flow.ops[1].start == -5
