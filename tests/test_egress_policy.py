"""Egress and durability settings an operator can get wrong: refused at start-up, or applied to every image.

* ``database.sqlite_synchronous: NORMAL`` is refused unless ``unsafe_fast_sqlite: true`` says the operator
  accepts losing acknowledged instances in a power cut;
* CXRReportGen rule params have a schema: a typo fails at load, naming the key;
* the prior image fetched for CXRReportGen goes through the same burned-in policy as the study's images.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from support.studies import derive_cxr_study


def _doc(**extra) -> dict:
    doc = {"endpoints": {"c": {"model": "cxrreportgen", "url": "http://127.0.0.1:1/score", "auth": "none"}},
           "rules": [{"name": "r", "endpoint": "c"}]}
    doc.update(extra)
    return doc


def test_sqlite_normal_is_refused_unless_the_operator_says_unsafe() -> None:
    from node.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"node.yaml: database.*NORMAL.*unsafe_fast_sqlite"):
        parse_config(_doc(database={"sqlite_synchronous": "NORMAL"}), "node.yaml")
    cfg = parse_config(_doc(database={"sqlite_synchronous": "NORMAL", "unsafe_fast_sqlite": True}), "node.yaml")
    assert cfg.database.sqlite_synchronous == "NORMAL"
    assert parse_config(_doc(), "node.yaml").database.sqlite_synchronous == "FULL"


def test_cxrreportgen_params_are_checked_at_load() -> None:
    from node.config import ConfigError, parse_config

    doc = _doc()
    doc["rules"][0]["params"] = {"max_sdie": 512}
    with pytest.raises(ConfigError, match=r"rules\[0\]\.params\.max_sdie: unknown key.*max_side"):
        parse_config(doc, "node.yaml")
    doc["rules"][0]["params"] = {"allow_burned_in": "sometimes"}
    with pytest.raises(ConfigError, match=r"params\.allow_burned_in"):
        parse_config(doc, "node.yaml")
    doc["rules"][0]["params"] = {"max_side": 512, "view_label_set": "views", "allow_burned_in": True}
    assert parse_config(doc, "node.yaml").rules[0].params["max_side"] == 512


@pytest.mark.parametrize("allow", [False, True])
def test_a_burned_in_prior_is_not_sent_unless_the_rule_allows_it(tmp_path: Path, data: Path, allow: bool) -> None:
    from node.models.cxrreportgen.priors import PriorResult, prior_inputs

    current = derive_cxr_study(tmp_path / "cur", data / "cxr" / "cr_pa_mono1_uncompressed.dcm", None)[0]
    prior = derive_cxr_study(tmp_path / "prior", data / "cxr" / "cr_pa_mono1_uncompressed.dcm", None)[0]
    ds = pydicom.dcmread(prior)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(prior, enforce_file_format=True)
    found = PriorResult(state="found", outcome="prior found", seconds=0.1, study_uid=str(ds.StudyInstanceUID),
                        study_date="20200101", image_path=prior, report="No acute findings.")
    got = prior_inputs(lambda _current: found, current, allow_burned_in=allow)
    if allow:
        assert got.png is not None and got.report == "No acute findings."
    else:
        assert got.png is None and got.report is None and not got.evidence
        assert "BurnedInAnnotation=YES" in got.note
