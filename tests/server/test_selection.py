"""Which models a server serves, and how requests name them: the settings (`--model` repeated or
listed, `--default-model`, `--model-version` pins), the choice made from the repository at start,
and the registry every request resolves through."""

from __future__ import annotations

import pytest
from support import GOOD_DECODER, GOOD_ENCODER, write_version_files
from two_models import GREY, RGB, two_models

from vae_serve.errors import InvalidInput, ModelLoadError, ModelNotFound, NotReady
from vae_serve.server.models.selection import choose_models, list_models
from vae_serve.server.models.versions import ServedVersions
from vae_serve.server.protocol.registry import ModelEntry, ModelRegistry
from vae_serve.server.settings import (
    RepositorySettings,
    Settings,
    SettingsError,
    ValidationError,
    describe_error,
    parse_args,
)


def refusal(*args: str) -> str:
    with pytest.raises((ValidationError, SettingsError)) as caught:
        parse_args(list(args))
    return describe_error(caught.value)


def test_model_is_a_list_from_flags_the_environment_and_the_config_file(tmp_path, monkeypatch):
    assert parse_args([]).model == []  # every model in the repository
    assert parse_args(["--model", "a", "--model", "b", "--model", "a"]).model == ["a", "b"]
    assert parse_args(["--model", "a,b"]).model == ["a", "b"]
    monkeypatch.setenv("VAE_MODEL", "fashion-vae")  # one name, as deployments set it
    assert parse_args([]).model == ["fashion-vae"]
    monkeypatch.setenv("VAE_MODEL", "a, b")
    assert parse_args([]).model == ["a", "b"]
    monkeypatch.setenv("VAE_MODEL", '["a", "b"]')
    assert parse_args([]).model == ["a", "b"]
    monkeypatch.delenv("VAE_MODEL")
    config = tmp_path / "serve.toml"
    config.write_text('model = "fashion-vae"\nmodel_version = "3"\n')
    assert (parse_args(["--config", str(config)]).model, Settings(model="m").model) == (
        ["fashion-vae"],
        ["m"],
    )
    config.write_text('model = ["a", "b"]\ndefault_model = "b"\nmodel_version = ["a:3"]\n')
    s = parse_args(["--config", str(config)])
    assert (s.model, s.default_model, s.model_version) == (["a", "b"], "b", ["a:3"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "../etc"], "--model / VAE_MODEL: a model name is letters, digits"),
        (["--model", "a/b"], "a model name is"),
        (["--default-model", ".."], "--default-model / VAE_DEFAULT_MODEL: a model name is"),
        (["--model-version", "x"], "--model-version / VAE_MODEL_VERSION: a version is a number"),
        (["--model-version", "a:1", "--model-version", "a:2"], "one version per model"),
        (["--model", "a", "--model", "b", "--model-version", "2"], "several models are served; write name:2"),
        (["--model", "a", "--model-version", "b:2"], "--model-version b:2: b is not among --model a"),
        (["--model", "a", "--default-model", "b"], "--default-model b is not among --model a"),
    ],
)
def test_model_settings_that_cannot_work_are_refused_in_one_line(args, message):
    text = refusal(*args)
    assert message in text and "\n" not in text, text


def repository(root, **settings: object) -> RepositorySettings:
    return Settings(model_repository=root, **settings).repository


def test_every_model_of_the_repository_is_chosen_unless_some_are_named(tmp_path, caplog):
    two_models(tmp_path)
    (tmp_path / ".staging").mkdir()  # hidden: silently not a model
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "a model").mkdir()  # a space: not a model name
    assert list_models(tmp_path) == [GREY, RGB]
    assert choose_models(repository(tmp_path)) == {GREY: None, RGB: None}
    assert choose_models(repository(tmp_path, model=[RGB])) == {RGB: None}
    assert choose_models(repository(tmp_path, model_version=["rgb:1"])) == {GREY: None, RGB: "1"}
    assert choose_models(repository(tmp_path, model=[GREY], model_version=["1"])) == {GREY: "1"}
    logged = [r.getMessage() for r in caplog.records]
    assert any("'notes.txt': not a model (not a directory)" in line for line in logged), logged
    assert any("'a model': not a model (not a model name" in line for line in logged), logged


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"model_version": ["1"]}, "--model-version 1: 2 models are served (grey, rgb); write name:1"),
        ({"model_version": ["blue:1"]}, "--model-version blue:1: blue is not served (grey, rgb)"),
        ({"default_model": "blue"}, "--default-model blue: not served (grey, rgb)"),
    ],
)
def test_a_choice_the_repository_cannot_meet_fails_start_up(tmp_path, settings, message):
    two_models(tmp_path)
    with pytest.raises(ModelLoadError) as caught:
        choose_models(repository(tmp_path, **settings))
    assert str(caught.value) == message


def test_an_empty_or_missing_repository_fails_start_up(tmp_path):
    with pytest.raises(ModelLoadError, match="no models in"):
        choose_models(repository(tmp_path))
    with pytest.raises(ModelLoadError, match="not found; pass --model-repository"):
        choose_models(repository(tmp_path / "absent"))


def test_a_model_named_as_the_aliases_can_only_be_the_default(tmp_path):
    two_models(tmp_path)
    write_version_files(tmp_path, GOOD_ENCODER, GOOD_DECODER, model="vae")
    with pytest.raises(ModelLoadError, match="model 'vae' would answer as vae_encoder and vae_decoder"):
        choose_models(repository(tmp_path, default_model=GREY))
    assert choose_models(repository(tmp_path, default_model="vae"))["vae"] is None
    assert choose_models(repository(tmp_path))["vae"] is None  # no default: no aliases to clash with


def registry(*names: str, default: str | None = None) -> ModelRegistry:
    models = ModelRegistry(default)
    for name in names:
        models.add(ModelEntry(name, ServedVersions(RepositorySettings())))
    return models


def test_the_registry_resolves_names_and_the_default():
    with pytest.raises(NotReady):  # nothing served yet: retry, whatever the name
        registry().entry("grey")
    one = registry(GREY)
    assert one.default == GREY and one.entry().name == GREY and one.entry(GREY).name == GREY
    two = registry(GREY, RGB, default=RGB)
    assert two.entry().name == RGB and two.names == [GREY, RGB]
    with pytest.raises(InvalidInput, match=r"no model named, and 2 are served \(grey, rgb\): name one"):
        registry(GREY, RGB).entry()
    with pytest.raises(ModelNotFound, match="no model 'blue'; models: grey, rgb"):
        two.entry("blue")
    two.remove(RGB)  # what unloading a model will do: its name no longer resolves
    assert two.names == [GREY] and two.default is None


def test_each_model_has_two_oip_names_and_the_default_two_more():
    models = registry(GREY, RGB, default=GREY)
    assert models.oip_names() == [
        "vae_encoder",
        "vae_decoder",
        "grey_encoder",
        "grey_decoder",
        "rgb_encoder",
        "rgb_decoder",
    ]
    assert models.oip_names(RGB) == ["rgb_encoder", "rgb_decoder"]
    for name, (model, graph) in {
        "vae_decoder": (GREY, "decoder"),
        "grey_encoder": (GREY, "encoder"),
        "rgb_decoder": (RGB, "decoder"),
    }.items():
        entry, oip = models.oip(name)
        assert (entry.name, oip.graph) == (model, graph), name
    for unknown in ("rgb", "rgb_", "_decoder", "rgb_other", "blue_encoder", "rgb_decoder/../x"):
        with pytest.raises(ModelNotFound, match="; models: vae_encoder, vae_decoder, grey_encoder"):
            models.oip(unknown)
    without_default = registry(GREY, RGB)
    assert "vae_encoder" not in without_default.oip_names()
    with pytest.raises(ModelNotFound):
        without_default.oip("vae_encoder")


def test_an_error_lists_a_few_models_and_says_how_many(tmp_path):
    many = registry(*(f"m{i:02}" for i in range(20)))
    with pytest.raises(ModelNotFound) as caught:
        many.entry("x" * 10_000)
    message = str(caught.value)
    assert message.endswith("models: m00, m01, m02, m03, m04, m05, m06, m07, ... (20 in all)")
    assert len(message) < 300 and "(10000 characters)" in message
