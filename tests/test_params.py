"""params.yaml's schema: the repository's file loads, and each kind of mistake names its key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svrd.errors import SvrdError
from svrd.params import Params, ParamsError, load_params, params_from_dict

ROOT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def changed(**dotted) -> dict:
    """A copy of params.yaml's mapping with dotted keys set (`train__lr=1` sets train.lr)."""
    raw = copy.deepcopy(RAW)
    for key, value in dotted.items():
        *parents, leaf = key.split("__")
        node = raw
        for part in parents:
            node = node[part]
        node[leaf] = value
    return raw


def problems(raw) -> str:
    with pytest.raises(ParamsError) as info:
        params_from_dict(raw)
    assert isinstance(info.value, SvrdError)
    return str(info.value)


def test_repository_params_load():
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.train.lr == RAW["train"]["lr"]
    assert params.train.lora.r == RAW["train"]["lora"]["r"]
    assert set(params.infer.models) == set(RAW["infer"]["models"])
    assert abs(sum(params.split.fractions) - 1) < 1e-6


def test_params_are_frozen():
    params = params_from_dict(RAW)
    with pytest.raises(Exception):  # noqa: B017 - pydantic's ValidationError for frozen instances
        params.train.lr = 1.0


def test_with_overrides_validates():
    params = params_from_dict(RAW)
    assert params.with_overrides({"train.lr": 1e-3}).train.lr == 1e-3
    with pytest.raises(ParamsError, match="train.lr"):
        params.with_overrides({"train.lr": -1})


@pytest.mark.parametrize(
    "key",
    [
        "data.source", "filter.on_invalid", "split.strategy", "teach.backend", "teach.on_disagree",
        "train.target", "train.conclusion", "train.optimizer", "train.schedule", "train.precision",
        "infer.mode",
    ],
)
def test_each_literal_rejects_a_bad_value_naming_the_key(key):
    message = problems(changed(**{key.replace(".", "__"): "bogus"}))
    assert f"params.yaml: {key}: must be" in message
    assert "'bogus'" in message
    # the allowed values are listed: the current (valid) one among them
    section, leaf = key.split(".")
    assert f"'{RAW[section][leaf]}'" in message


@pytest.mark.parametrize(
    ("dotted", "suggestion"),
    [
        ({"train": {"lrr": 1e-3}}, "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
        ({"train": {"lora": {"rr": 8}}}, "unknown key 'train.lora.rr' (did you mean 'train.lora.r'?)"),
        ({"trian": {"lr": 1e-3}}, "unknown key 'trian' (did you mean 'train'?)"),
        ({"infer": {"max_new_token": 5}}, "did you mean 'infer.max_new_tokens'?"),
        ({"teach": {"schedule": "linear"}}, "unknown key 'teach.schedule' (did you mean 'train.schedule'?)"),  # wrong section
    ],
)
def test_unknown_keys_suggest_the_closest_name(dotted, suggestion):
    raw = copy.deepcopy(RAW)
    for section, extra in dotted.items():
        target = raw.setdefault(section, {})
        for key, value in extra.items():
            if isinstance(value, dict):
                target[key].update(value)
            else:
                target[key] = value
    assert suggestion in problems(raw)


def test_missing_key_is_named():
    raw = copy.deepcopy(RAW)
    del raw["train"]["lr"]
    assert "missing key 'train.lr'" in problems(raw)


@pytest.mark.parametrize(
    ("key", "value", "expect"),
    [
        ("train__lr", 0, "train.lr: must be greater than 0"),
        ("train__lr", float("nan"), "train.lr: must be a finite number"),
        ("train__lr", True, "train.lr: expected a number"),
        ("train__epochs", 0, "train.epochs: must be greater than 0"),
        ("train__batch_size", 0, "train.batch_size: must be greater than or equal to 1"),
        ("train__batch_size", 2.5, "train.batch_size"),
        ("train__lora__dropout", 1.0, "train.lora.dropout: must be less than 1"),
        ("teach__concurrency", 0, "teach.concurrency: must be greater than or equal to 1"),
        ("teach__concurrency", 1025, "teach.concurrency: must be less than or equal to 1024"),
        ("teach__samples", 0, "teach.samples"),
        ("teach__temperature", -0.1, "teach.temperature: must be greater than or equal to 0"),
        ("teach__max_new_tokens", 0, "teach.max_new_tokens"),
        ("student__image_tokens", 0, "student.image_tokens"),
        ("data__sample__per_family", 0, "data.sample.per_family"),
        ("split__max_train", 0, "split.max_train"),
        ("filter__images_only", "yes", "filter.images_only: must be a valid boolean"),
        ("infer__models", {}, "infer.models: must have at least 1 item"),
        ("infer__models", ["base", "distilled"], "infer.models: must be a valid dictionary"),
        ("teach__api_key_env", "MY KEY", "teach.api_key_env: must match pattern"),
        ("teach__base_url", "localhost:8000", "teach.base_url: must match pattern"),
    ],
)
def test_ranges_and_types_name_the_key(key, value, expect):
    assert expect in problems(changed(**{key: value}))


def test_accepted_variants():
    assert params_from_dict(changed(train__epochs=0.5)).train.epochs == 0.5
    assert isinstance(params_from_dict(changed(train__epochs=3.0)).train.epochs, int)
    assert params_from_dict(changed(train__lr="1e-3")).train.lr == 1e-3  # PyYAML reads 1e-3 as a string
    assert params_from_dict(changed(split__max_train=None)).split.max_train is None
    lora = params_from_dict(changed(train__lora__target_modules=["q_proj", "v_proj"])).train.lora
    assert lora.target_modules == ("q_proj", "v_proj")


@pytest.mark.parametrize(
    ("fractions", "expect"),
    [
        ([0.7, 0.1, 0.1], "split.fractions: train/val/test fractions must sum to 1"),
        ([0.8, 0.2, 0.0], "split.fractions[2]: must be greater than 0"),
        ([1.0, 0.0, 0.0], "split.fractions[0]: must be less than 1"),
        ([0.5, 0.5], "split.fractions: too few items"),
        ([0.25, 0.25, 0.25, 0.25], "split.fractions: must have at most 3 items"),
    ],
)
def test_fractions(fractions, expect):
    assert expect in problems(changed(split__fractions=fractions))


def test_fractions_tolerate_float_rounding():
    assert params_from_dict(changed(split__fractions=[0.6, 0.3, 0.1])).split.fractions == (0.6, 0.3, 0.1)


@pytest.mark.parametrize(
    ("changes", "expect"),
    [
        ({"teach__backend": "openai", "teach__model": "m"}, "teach.base_url required when teach.backend is 'openai'"),
        ({"teach__backend": "openai", "teach__base_url": "http://h:8000/v1"}, "teach.model required"),
        ({"teach__backend": "hf", "teach__model": None}, "teach.model required when teach.backend is 'hf'"),
        ({"data__source": "scienceqa", "data__path": None}, "data.path is required when data.source is 'scienceqa'"),
        ({"data__source": "hf", "data__path": None}, "data.path is required when data.source is 'hf'"),
        ({"tiny__heads": 3}, "tiny.text_width (128) must be a multiple of tiny.heads (3)"),
        ({"tiny__patch_size": 7}, "must be a multiple of tiny.patch_size"),
        ({"train__target": "mix", "train__mix_answer_share": 0.0}, "train.mix_answer_share must be strictly"),
    ],
)
def test_cross_field_checks(changes, expect):
    assert expect in problems(changed(**changes))


def test_cross_field_checks_pass_when_satisfied():
    p = params_from_dict(changed(teach__backend="openai", teach__model="m", teach__base_url="http://h:8000/v1"))
    assert p.teach.backend == "openai"
    assert params_from_dict(changed(teach__backend="hf", teach__model="org/model")).teach.model == "org/model"


def test_infer_model_referring_to_an_unset_param():
    raw = copy.deepcopy(RAW)
    raw["infer"]["models"]["teacher"] = {"path": "teach.model", "dep": "data/teach"}
    assert "infer.models.teacher.path refers to teach.model, which is not set" in problems(raw)


KEY = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" * 2


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"teach__api_key": KEY}, "teach.api_key"),
        ({"teach__api_key_env": KEY}, "teach.api_key_env"),
        ({"teach__base_url": f"http://user:{KEY}@host/v1"}, "teach.base_url"),
        ({"teach__token": "plain-looking"}, "teach.token"),
        ({"teach__model": "hf_" + "a" * 34}, "teach.model"),
    ],
)
def test_api_keys_are_refused_without_echoing_them(changes, where):
    message = problems(changed(**changes))
    assert f"{where} looks like an API key" in message
    assert "belong in the environment" in message
    assert "plain-looking" not in message and KEY not in message
    assert message.count(where + " looks") == 1 and len(message.splitlines()) == 1  # not again as unknown


def test_names_that_merely_mention_tokens_are_not_secrets():
    p = params_from_dict(changed(teach__model="models/task-classifier-abcdefghijklmnop"))
    assert p.infer.max_new_tokens >= 1  # max_new_tokens / image_tokens / api_key_env pass


def test_all_problems_listed_one_per_line():
    message = problems(changed(train__lr=-1, infer__mode="beam", trian={}))
    lines = message.splitlines()
    assert len(lines) == 3
    assert all(line.startswith("params.yaml: ") for line in lines)


def test_load_params_file_errors(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(bad)
    text = (ROOT / "params.yaml").read_text()
    bad.write_text(text.replace("\n  lr:", "\n  lr: 1.0\n  lr:", 1))
    with pytest.raises(ParamsError, match="'lr' appears twice"):
        load_params(bad)


def test_load_params_reads_dvc_style_values(tmp_path):
    # `dvc exp run -S train.lr=1e-3` may leave a value PyYAML reads as a string
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text().replace("lr: 5.0e-4", "lr: 1e-3"))
    assert load_params(path).train.lr == 1e-3


def _leaf_paths(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaf_paths(value, prefix + (key,))
    elif isinstance(node, list) and node:
        for i, value in enumerate(node):
            yield from _leaf_paths(value, prefix + (i,))
    else:
        yield prefix


LEAVES = list(_leaf_paths(RAW))
junk = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="sk-_abcdefghijklmnopqrstuvwxyz0123456789", min_size=19, max_size=40),
    st.none(), st.booleans(), st.integers(), st.floats(), st.lists(st.text(max_size=5), max_size=4),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=3),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(leaf=st.sampled_from(LEAVES), value=junk, rename=st.booleans(), new_key=st.text(max_size=12))
def test_random_leaf_never_escapes_params_error(leaf, value, rename, new_key):
    raw = copy.deepcopy(RAW)
    node = raw
    for part in leaf[:-1]:
        node = node[part]
    if rename and isinstance(node, dict):  # a misspelled key instead of a bad value
        node[new_key] = node.pop(leaf[-1])
    else:
        node[leaf[-1]] = value
    try:
        params = params_from_dict(raw)
    except ParamsError as exc:
        assert str(exc).strip()
        assert all(line.startswith("params.yaml: ") for line in str(exc).splitlines())
    else:
        assert isinstance(params, Params)
