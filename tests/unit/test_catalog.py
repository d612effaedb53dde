"""The model catalog: the packaged catalogs load, and every mistake is named by file, entry, field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from launcher.core.catalog import CatalogError, load_catalog, packaged_catalog, resolve_catalog_path
from launcher.core.catalog import time_limit_seconds

DEMO_ENV = {"LLM_LAUNCH_CHAT_MODEL": "/m/chat", "LLM_LAUNCH_EMBED_MODEL": "/m/embed",
            "LLM_LAUNCH_WHISPER_MODEL": "/m/whisper"}
MINIMAL = '[models.tiny]\nengine = "whisper"\nweights = "/w"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    return path


def test_production_catalog_serves_the_public_models_of_the_api_page() -> None:
    catalog = load_catalog(packaged_catalog("production"), environ={})
    names = {n for e in catalog.entries.values() for n in e.public_names}
    assert names == {"qwen3.5-122b", "qwen3.5-122b-nonthinking", "gemma-4-31B-it",
                     "whisper-large-v3", "qwen3-embedding-8B", "qwen3-reranker-8B"}
    qwen = catalog.entry("qwen3.5-122b-nonthinking")
    assert qwen.name == "qwen3-5-122b" and "vision" in qwen.capabilities
    nonthinking = catalog.public_name("qwen3.5-122b-nonthinking")
    assert nonthinking is not None
    assert nonthinking.defaults["chat_template_kwargs"] == {"enable_thinking": False}
    assert nonthinking.defaults["presence_penalty"] == 1.5
    gemma = catalog.public_name("gemma-4-31B-it")
    assert gemma is not None and dict(gemma.defaults) == {"temperature": 1.0, "top_p": 0.95, "top_k": 64}
    embed = catalog.entry("qwen3-embedding-8B")
    assert embed.dimensions == 4096 and "--runner" in embed.engine_args
    assert catalog.entry("whisper-large-v3").engine == "whisper"
    reranker = catalog.entry("qwen3-reranker-8B")
    # vLLM's documented flags for the original Qwen3-Reranker (a classifier over "no"/"yes")
    assert reranker.kind == "rerank" and "Qwen3ForSequenceClassification" in " ".join(reranker.engine_args)


def test_demo_catalog_expands_weights_from_the_environment() -> None:
    catalog = load_catalog(packaged_catalog("demo"), environ=DEMO_ENV)
    assert catalog.entry("smollm2-135m").weights == "/m/chat"
    assert catalog.entry("whisper-tiny.en").weights == "/m/whisper"
    assert catalog.entry("minilm-embed").dimensions == 384
    assert all(not e.missing_env for e in catalog.entries.values())


def test_demo_catalog_serves_the_api_page_names_on_honest_small_models() -> None:
    demo = load_catalog(packaged_catalog("demo"), environ=DEMO_ENV)
    production = load_catalog(packaged_catalog("production"), environ={})
    public = {n for e in production.entries.values() for n in e.public_names}
    assert public <= {n for e in demo.entries.values() for n in e.public_names}
    chat = demo.entry("qwen3.5-122b")
    assert chat.name == "smollm2-135m" and chat.base_model == "SmolLM2-135M-Instruct"
    assert "smollm2-135m" in chat.public_names and chat.served_name == "smollm2-135m"
    nonthinking = demo.public_name("qwen3.5-122b-nonthinking")
    assert nonthinking is not None and dict(nonthinking.defaults) == {
        "temperature": 0.7, "top_p": 0.8, "presence_penalty": 1.5,
        "chat_template_kwargs": {"enable_thinking": False}}
    gemma = demo.public_name("gemma-4-31B-it")
    assert gemma is not None and dict(gemma.defaults) == {"temperature": 1.0, "top_p": 0.95, "top_k": 64}
    assert demo.entry("qwen3-embedding-8B").base_model == "all-MiniLM-L6-v2"
    assert demo.entry("whisper-large-v3").public_names == ("whisper-large-v3", "whisper-tiny.en")


def test_unset_variable_is_named_when_strict_and_remembered_otherwise() -> None:
    with pytest.raises(CatalogError, match=r"demo.toml: \[models.smollm2-135m\] weights: environment "
                                           r"variable LLM_LAUNCH_CHAT_MODEL is not set"):
        load_catalog(packaged_catalog("demo"), environ={}, strict_env=True)
    lenient = load_catalog(packaged_catalog("demo"), environ={})
    assert lenient.entry("smollm2-135m").missing_env == ("LLM_LAUNCH_CHAT_MODEL",)


def test_an_entry_without_names_serves_its_own_name(tmp_path: Path) -> None:
    entry = load_catalog(write(tmp_path, MINIMAL)).entry("tiny")
    assert entry.public_names == ("tiny",) and entry.served_name == "tiny"
    assert entry.kind == "transcription" and entry.gpus == 1 and entry.replicas == 1


def test_lookup_of_an_unknown_model_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"unknown model 'nope' .*known: tiny"):
        load_catalog(write(tmp_path, MINIMAL)).entry("nope")


@pytest.mark.parametrize(("extra", "message"), [
    ('gpus = "four"', r'\[models.tiny\] gpus: expected a positive whole number, got "four"'),
    ("gpus = 0", r"gpus: expected a positive whole number, got 0"),
    ("replicas = -1", r"replicas: expected a whole number >= 0, got -1"),
    ('time = "forever"', r'time: expected a Slurm time limit like "04:00:00"'),
    ("engine_args = [1, true]", r"engine_args: expected a list of strings"),
    ('kind = "chat"', r"kind: the whisper engine serves transcription only"),
    ('capabilities = ["telepathy"]', r"capabilities: expected words from"),
    ("gpu = 2", r"\[models.tiny\] gpu: unknown field"),
    ("env = { 1BAD = \"x\" }", r"env.1BAD: not a valid environment variable name"),
    ("nodes = 2", r"nodes: multi-node jobs are not supported"),
    ('command = ["x"]', r'command: only used with engine = "command"'),
])
def test_invalid_fields_are_named_with_file_and_entry(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(CatalogError, match=r"catalog.toml: .*" + message):
        load_catalog(write(tmp_path, MINIMAL + extra + "\n"))


@pytest.mark.parametrize(("text", "message"), [
    ('[models.x]\nweights = "w"\n', r"\[models.x\] engine: required"),
    ('[models.x]\nengine = "tgi"\nweights = "w"\n', r'engine: expected one of vllm, whisper, command, got "tgi"'),
    ('[models.x]\nengine = "vllm"\n', r"\[models.x\] weights: required"),
    ("[models.x\n", r"not valid TOML"),
    ("[other]\n", r"unknown top-level table"),
    ('[models."bad name"]\nengine = "vllm"\nweights = "w"\n', r"name: use letters, digits"),
    ('[models.x]\nengine = "command"\nweights = "w"\n', r"command: engine \"command\" needs"),
])
def test_broken_entries_are_rejected(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        load_catalog(write(tmp_path, text))


def test_public_names_are_unique_across_entries(tmp_path: Path) -> None:
    text = MINIMAL + '[models.other]\nengine = "whisper"\nweights = "/w"\n[models.other.names.tiny]\n'
    with pytest.raises(CatalogError, match=r"\[models.other\] names: public name 'tiny' is already used by "
                                           r"\[models.tiny\]"):
        load_catalog(write(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="catalog file not found"):
        load_catalog(tmp_path / "absent.toml")


def test_catalog_path_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LLM_LAUNCH_CATALOG", raising=False)
    assert resolve_catalog_path(None) == packaged_catalog("production")
    assert resolve_catalog_path(None, "demo") == packaged_catalog("demo")
    monkeypatch.setenv("LLM_LAUNCH_CATALOG", str(tmp_path / "env.toml"))
    assert resolve_catalog_path(None, "demo") == tmp_path / "env.toml"
    assert resolve_catalog_path(str(tmp_path / "cli.toml"), "demo") == tmp_path / "cli.toml"


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 1800), ("30:15", 1815), ("04:00:00", 14400), ("1-00:00:00", 86400), ("2-12", 216000),
    ("1-02:03", 93780),
])
def test_slurm_time_limits(text: str, seconds: int) -> None:
    assert time_limit_seconds(text) == seconds


def test_defaults_fill_only_listed_fields(tmp_path: Path) -> None:
    text = ('[models.c]\nengine = "vllm"\nweights = "w"\n'
            '[models.c.names.a]\ndefaults = { temperature = 0.1 }\n[models.c.names.b]\n')
    catalog = load_catalog(write(tmp_path, text))
    found: dict[str, Any] = {n: dict(p.defaults) for n in ("a", "b") if (p := catalog.public_name(n))}
    assert found == {"a": {"temperature": 0.1}, "b": {}}
    assert catalog.entry("c").served_name == "a"
