"""Option types: an option of the wrong type or value is named, with what was expected, by
``create_model``, ``create_attention`` and ``rpevit train`` alike."""

from __future__ import annotations

import numpy as np
import pytest
from test_hostile import TINY, fails, outputs

import rpevit
from rpevit.registry import BACKBONE_OPTIONS, KERNELS, OPTION_TYPES, POSITIONS

SIZES = dict(image_size=8, in_chans=1, num_classes=2, patch_size=4, dim=16, depth=1, heads=2)

#: (model, option, value, message): one wrong type or value per declared option.
WRONG = [
    ("favor-ape", "nb_features", "abc", "nb_features must be an integer >= 1, got 'abc' (str)"),
    ("favor-ape", "nb_features", True, "nb_features must be an integer >= 1, got True (bool)"),
    ("favor-ape", "nb_features", 16.0, "nb_features must be an integer >= 1, got 16.0 (float)"),
    ("favor-ape", "redraw_interval", 1.5, "redraw_interval must be an integer >= 0, got 1.5"),
    ("favor-ape", "redraw_interval", -1, "redraw_interval must be >= 0, got -1"),
    ("favor-ape", "redraw_stop", "all", "redraw_stop must be a number in [0, 1], got 'all' (str)"),
    ("favor-ape", "redraw_stop", 1.5, "redraw_stop must be in [0, 1], got 1.5"),
    ("favor-ape", "redraw_stop", float("nan"), "redraw_stop must be in [0, 1], got nan"),
    ("relu-rpe", "rpe_method", 3, "rpe_method must be 'auto', 'quadratic' or 'fft', got 3 (int)"),
    ("relu-rpe", "rpe_method", "dense", "rpe_method must be 'auto', 'quadratic' or 'fft'"),
    ("relu-ape", "feature_projection", True, "feature_projection must be 'identity' or 'learned'"),
    ("linformer-ape", "linformer_k", "8", "linformer_k must be an integer >= 1, got '8' (str)"),
    ("linformer-ape", "linformer_sharing", 1, "linformer_sharing must be 'none', 'key-value' or"),
    ("favor-frpe", "frpe_terms", 2.0, "frpe_terms must be an integer >= 1, got 2.0 (float)"),
    ("favor-string", "string_base", "big", "string_base must be a number > 0, got 'big' (str)"),
    ("favor-string", "string_base", 0, "string_base must be > 0, got 0"),
    ("softmax-rope", "rope_base", float("inf"), "rope_base must be > 0, got inf"),
    ("softmax-rope", "rope_mode", "spiral", "rope_mode must be 'axial' or 'mixed', got 'spiral'"),
    ("softmax-ape", "qk_norm", 1, "qk_norm must be a bool (True or False), got 1 (int)"),
]

#: Backbone options, which only ``create_model`` takes.
WRONG_BACKBONE = [
    ("pool", 3, "pool must be 'cls' or 'mean', got 3 (int)"),
    ("pool", "max", "pool must be 'cls' or 'mean', got 'max'"),
    ("ape", "yes", "ape must be a bool (True or False), got 'yes' (str)"),
    ("dropout", "0.1", "dropout must be a number in [0, 1), got '0.1' (str)"),
    ("emb_dropout", 1.0, "emb_dropout must be in [0, 1), got 1.0"),
]


def test_every_option_has_one_declared_type():
    declared = {*BACKBONE_OPTIONS}
    for table in (KERNELS, POSITIONS):
        declared |= {key for _, keys in table.values() for key in keys}
    assert declared == set(OPTION_TYPES)


@pytest.mark.parametrize("name,key,value,message", WRONG)
def test_wrong_option_types_are_named_by_create_model_and_create_attention(
    name, key, value, message
):
    with pytest.raises(ValueError) as error:
        rpevit.create_model(name, mlp_dim=8, **SIZES, **{key: value})
    assert message in str(error.value)
    with pytest.raises(ValueError) as error:
        rpevit.create_attention(name, 16, 2, (2, 2), **{key: value})
    assert message in str(error.value)


@pytest.mark.parametrize("key,value,message", WRONG_BACKBONE)
def test_wrong_backbone_option_types_are_named_by_create_model(key, value, message):
    with pytest.raises(ValueError) as error:
        rpevit.create_model("softmax-ape", mlp_dim=8, **SIZES, **{key: value})
    assert message in str(error.value)


def test_right_types_pass_including_ints_for_floats_and_numpy_scalars():
    model = rpevit.create_model(
        "favor-string", mlp_dim=8, **SIZES, nb_features=np.int64(12), redraw_stop=1,
        string_base=10, dropout=np.float32(0.1), qk_norm=True, redraw_interval=None,
    )  # fmt: skip
    assert model.feature_count == 12
    layer = rpevit.create_attention("relu-rope", 16, 2, 2, rope_mode="mixed", rope_base=50)
    assert layer.position.mode == "mixed"


@pytest.mark.parametrize(
    "option,expected",
    [
        ("nb_features=abc", ["nb_features must be an integer >= 1", "got 'abc' (str)"]),
        ("redraw_stop=late", ["redraw_stop must be a number in [0, 1]", "got 'late' (str)"]),
        ("rpe_method=3", ["rpe_method must be 'auto', 'quadratic' or 'fft', got 3 (int)"]),
        ("nb_features=True", ["nb_features must be an integer >= 1, got True (bool)"]),
    ],
)
def test_wrong_option_types_on_the_command_line(tmp_path, capsys, option, expected):
    argv = ["train", "--model", "favor-rpe", *TINY, "--option", option]
    data = ["--data-dir", str(tmp_path / "data"), "--no-download", "--out", str(tmp_path / "r")]
    message = fails(capsys, [*argv, *data], "cannot build model 'favor-rpe'", *expected)
    assert "not supported between" not in message
    assert outputs(tmp_path) == []
