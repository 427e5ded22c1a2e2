import pytest

from config.loader import ConfigError, apply_overrides, load_config, parse_mparams
from tests.helpers.config_cases import BAD_MPARAMS


def test_parse_mparams_types_and_brackets():
    got = parse_mparams("a=1, b=0.5,c=true,d=None,e=(1, 2),f=swish,g='x,y'")
    assert got == {"a": 1, "b": 0.5, "c": True, "d": None, "e": (1, 2), "f": "swish", "g": "x,y"}


def test_parse_mparams_rejects_item_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        parse_mparams("a=1,b")


def test_unknown_key_suggests_close_match():
    with pytest.raises(ConfigError, match=r"unknown --mparams key 'widht'.*did you mean 'width'"):
        apply_overrides({"width": 1.0, "depth": 1.0}, {"widht": 2})


def test_load_config_file_and_override(tmp_path):
    cfg = tmp_path / "tiny_cfg.py"
    cfg.write_text("config = dict(width=1.0, name='t')\n")
    assert load_config(str(cfg), "width=0.25") == {"width": 0.25, "name": "t"}


def test_load_config_missing_file_and_missing_dict(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.py"))
    bad = tmp_path / "bad_cfg.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="no `config` dict"):
        load_config(str(bad))


@pytest.mark.parametrize("mparams, message", BAD_MPARAMS)
def test_bad_mparams_values_are_config_errors(mparams, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config("config/efficientnet_v2/s_cfg.py", mparams)
    assert "\n" not in str(info.value)


def test_every_value_type_of_the_model_configs_has_a_bad_value_case():
    from config.loader import load_module_config

    covered = {m.split("=")[0] for m, _ in BAD_MPARAMS}
    for path in ("config/efficientnet_v1/b0_cfg.py", "config/efficientnet_v2/s_cfg.py"):
        types = {}
        for key, value in load_module_config(path).items():
            types.setdefault(type(value).__name__, set()).add(key)
        for type_name, keys in types.items():
            if type_name != "NoneType":
                assert keys & covered, (path, type_name, keys)


def test_good_overrides_of_every_type_pass():
    config = load_config(
        "config/efficientnet_v1/b0_cfg.py",
        "width_coefficient=2,dropout_rate=0.5,min_depth=8,include_top=false,"
        "name=x,train_img_size=64,blocks=('r1_k3_s1_e1_i32_o16_se0.25',)",
    )
    assert (config["width_coefficient"], config["min_depth"], config["include_top"]) == (
        2,
        8,
        False,
    )


def test_input_normalization_names_agree_with_the_model():
    """The loader keeps no copy of the list: it takes every normalization the model's layer
    implements and refuses any other, naming exactly those ("mean_std" needs its values: its
    own tests are in tests/model/test_lite.py)."""
    from model.efficientnet import INPUT_NORMALIZATIONS
    from model.schema import INPUT_NORMALIZATION_MODES

    path = "config/efficientnet_v2/s_cfg.py"
    for name in INPUT_NORMALIZATIONS:
        assert load_config(path, f"input_normalization={name!r}")["input_normalization"] == name
    with pytest.raises(ConfigError) as info:
        load_config(path, "input_normalization=zscore")
    assert str(info.value).endswith("choose from " + ", ".join(INPUT_NORMALIZATION_MODES))


@pytest.mark.parametrize("word", ["none", "None", "'none'"])
def test_the_word_none_is_a_string_value_where_the_key_takes_it(word):
    """docs/models.md writes `input_normalization=none`; bare none parses as Python None."""
    config = load_config("config/efficientnet_v1/b0_cfg.py", f"input_normalization={word}")
    assert config["input_normalization"] == "none"


def test_none_stays_none_where_the_key_takes_none_and_is_a_bad_value_elsewhere():
    config = load_config("config/efficientnet_v1/b0_cfg.py", "min_depth=none")
    assert config["min_depth"] is None
    with pytest.raises(ConfigError, match="unknown activation 'none'"):
        load_config("config/efficientnet_v1/b0_cfg.py", "activation=none")
