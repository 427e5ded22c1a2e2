import pytest

from config.loader import ConfigError, apply_overrides, load_config, parse_mparams


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
