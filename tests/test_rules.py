"""Routing rules: per-series matching, globs, lists, case, numbers, multi-valued and missing tags."""

from __future__ import annotations

import pydicom
import pytest

from node.config import ConfigError, parse_config
from node.flow.decide import explain_mismatch, instance_matches, plan_study


def ds(**kw) -> pydicom.Dataset:
    d = pydicom.Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def test_scalar_list_glob_and_case() -> None:
    d = ds(Modality="DX", BodyPartExamined="chest", SeriesNumber=3)
    assert instance_matches({"Modality": ["CR", "DX"]}, d)
    assert instance_matches({"BodyPartExamined": "CHEST*"}, d)
    assert instance_matches({"BodyPartExamined": "ch?st"}, d)
    assert not instance_matches({"BodyPartExamined": "ABDOMEN"}, d)
    assert instance_matches({"SeriesNumber": 3}, d)
    assert instance_matches({"SeriesNumber": "3"}, d)
    assert not instance_matches({"SeriesNumber": 4}, d)
    assert instance_matches({"Modality": "DX", "BodyPartExamined": "CHEST"}, d)
    assert not instance_matches({"Modality": "CT", "BodyPartExamined": "CHEST"}, d)


def test_missing_and_empty_tags_do_not_match() -> None:
    assert not instance_matches({"BodyPartExamined": "*"}, ds(Modality="CR"))
    assert not instance_matches({"BodyPartExamined": "*"}, ds(Modality="CR", BodyPartExamined=""))
    assert instance_matches({}, ds(Modality="CR"))


def test_explain_mismatch_names_the_first_failing_key_and_the_values_found() -> None:
    d = ds(Modality="DX", BodyPartExamined="THORAX", ImageType=["ORIGINAL", "PRIMARY"])
    assert explain_mismatch({"Modality": ["CR", "DX"], "BodyPartExamined": "CHEST*"}, d) == (
        "BodyPartExamined", "CHEST*", ["THORAX"])
    assert explain_mismatch({"Modality": "CT", "BodyPartExamined": "CHEST*"}, d) == ("Modality", "CT", ["DX"])
    assert explain_mismatch({"ViewPosition": "PA"}, d) == ("ViewPosition", "PA", None)  # absent
    assert explain_mismatch({"ImageType": "LOCALIZER"}, d) == ("ImageType", "LOCALIZER", ["ORIGINAL", "PRIMARY"])
    for match in ({"Modality": "DX"}, {"ImageType": "PRIMARY"}, {}, {"Modality": "dx", "BodyPartExamined": "thor*"}):
        assert explain_mismatch(match, d) is None and instance_matches(match, d)


def test_multivalued_attribute_matches_any_value() -> None:
    d = ds(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    assert instance_matches({"ImageType": "AXIAL"}, d)
    assert not instance_matches({"ImageType": "LOCALIZER"}, d)


def test_plan_is_per_series_and_every_matching_rule_runs() -> None:
    cfg = parse_config({
        "endpoints": {"cxr": {"model": "cxrreportgen", "url": "http://127.0.0.1:1/score", "auth": "none"},
                      "emb": {"model": "medimageinsight", "url": "http://127.0.0.1:1/score", "auth": "none"}},
        "rules": [
            {"name": "cxr", "match": {"Modality": ["CR", "DX"], "BodyPartExamined": "CHEST*"}, "endpoint": "cxr"},
            {"name": "all", "match": {}, "endpoint": "emb"},
            {"name": "ct", "match": {"Modality": "CT"}, "endpoint": "emb"},
        ]})
    headers = [
        ds(SeriesInstanceUID="1.1", Modality="CR", BodyPartExamined="CHEST"),
        ds(SeriesInstanceUID="1.2", Modality="CR", BodyPartExamined="CHEST"),
        ds(SeriesInstanceUID="1.3", Modality="DX"),  # no body part: the cxr rule does not take it
    ]
    plans = {p.rule.name: p.series_uids for p in plan_study(cfg.rules, headers)}
    assert plans == {"cxr": ["1.1", "1.2"], "all": ["1.1", "1.2", "1.3"]}


@pytest.mark.parametrize("doc, expected", [
    ({"node": {"port": 70000}}, "node.port"),
    ({"node": {"ae_title": "THIS_AE_TITLE_IS_TOO_LONG"}}, "node.ae_title"),
    ({"rules": [{"name": "r", "endpoint": "nope"}]}, "rules[0].endpoint: unknown endpoint 'nope'"),
    ({"endpoints": {"e": {"model": "gpt", "url": "https://x/score"}}}, "endpoints.e.model: allowed:"),
    ({"endpoints": {"e": {"model": "cxrreportgen", "url": "https://x/score"}}}, "needs key_env"),
    ({"endpoints": {"e": {"model": "cxrreportgen", "auth": "none"}}}, "give either url"),
    ({"node": {"surprise": 1}}, "node.surprise: unknown key"),
    ({"rules": [{"name": "r", "endpoint": "e", "match": {"Modalty": "CR"}}],
      "endpoints": {"e": {"model": "cxrreportgen", "url": "http://x/score", "auth": "none"}}},
     "not a DICOM keyword"),
])
def test_config_errors_name_file_key_and_allowed(tmp_path, doc, expected) -> None:
    import yaml

    from node.config import load_config

    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(f) in str(err.value)
    assert expected in str(err.value)


@pytest.mark.sqlite
def test_example_config_is_valid_and_paths_are_relative_to_it(monkeypatch) -> None:
    from support.data import REPO
    from node.config import load_config

    cfg = load_config(REPO / "config" / "example.yaml")
    assert cfg.storage_dir == (REPO / "config" / "var").resolve()
    assert cfg.rules[0].name == "chest-xray-findings"
    assert cfg.database_url.endswith("node.db") and cfg.queue_url.endswith("queue.db")


def test_example_config_documents_every_key() -> None:
    """config/example.yaml names every key of the config model (commented-out ones count), the sections inside
    lists, dicts and discriminated unions included (``sources``: the change feed and the UPS-RS worklist)."""
    import typing

    from pydantic import BaseModel

    from support.data import REPO
    from node.config import NodeConfig

    text = (REPO / "config" / "example.yaml").read_text()
    missing: list[str] = []
    walked: set[str] = set()

    def models_in(ann: object) -> typing.Iterator[type[BaseModel]]:
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield ann
        for arg in typing.get_args(ann):  # list[...], dict[str, ...], X | None, Annotated[A | B, discriminator]
            yield from models_in(arg)

    def walk(model: type[BaseModel]) -> None:
        if model.__name__ in walked:
            return
        walked.add(model.__name__)
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            if f"{name}:" not in text:
                missing.append(f"{model.__name__}.{name}")
            for inner in models_in(field.annotation):
                walk(inner)

    walk(NodeConfig)
    assert not missing, f"undocumented keys in config/example.yaml: {missing}"
    # the walk reaches the sections of every concern (a section it cannot see is a section it cannot check)
    assert {"SourceSection", "UpsSourceSection", "WorkitemCode", "ExpectedSeries", "MllpListenerSection",
            "SyslogSection", "OidcSection", "HttpTlsSection", "RetractionSection", "MonitoringSection"} <= walked


def test_dicom_node_check_config_passes_on_the_example() -> None:
    """The README's first step: ``dicom-node check-config config/example.yaml`` answers OK (exit 0)."""
    import subprocess
    import sys

    from support.data import REPO

    out = subprocess.run([sys.executable, "-m", "node.cli", "check-config", str(REPO / "config" / "example.yaml")],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0 and "config/example.yaml: OK" in out.stdout, out.stdout + out.stderr


def test_example_config_documents_every_rule_param() -> None:
    """The per-model rule params (node.rule_params) are documented in config/example.yaml too."""
    from support.data import REPO
    from node.models.registry import MODELS

    PARAMS_MODELS = {name: m.params_schema() for name, m in MODELS.items() if m.params}

    text = (REPO / "config" / "example.yaml").read_text()
    missing = [f"{model}.{name}" for model, schema in PARAMS_MODELS.items() for name in schema.model_fields
               if f"{name}:" not in text]
    assert not missing, f"config/example.yaml does not document: {missing}"


def test_rule_params_are_checked_at_load_with_file_and_key() -> None:
    from node.config import ConfigError, parse_config

    doc = {"endpoints": {"p": {"model": "medimageparse3d", "url": "http://127.0.0.1:1/score", "auth": "none"}},
           "rules": [{"name": "r", "endpoint": "p", "params": {"prompt": "liver", "series": "biggest"}}]}
    with pytest.raises(ConfigError, match=r"node.yaml: rules\[0\]\.params\.series: .*largest-axial"):
        parse_config(doc, "node.yaml")
    doc["rules"][0]["params"] = {"promt": "liver"}
    with pytest.raises(ConfigError, match=r"rules\[0\]\.params\.promt: unknown key.*allowed: prompt"):
        parse_config(doc, "node.yaml")
    doc["rules"][0]["params"] = {"prompt": "liver & & spleen"}
    with pytest.raises(ConfigError, match=r"params\.prompt: blank prompt"):
        parse_config(doc, "node.yaml")
    doc["rules"][0]["params"] = {"prompt": ["liver", "spleen"], "category": "Other Organ"}
    assert parse_config(doc, "node.yaml").rules[0].params["category"] == "Other Organ"
