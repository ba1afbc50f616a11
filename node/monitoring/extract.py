"""Findings from a radiologist's report: present, absent or uncertain, for each finding the node codes.

A spaCy pipeline built from nothing that needs downloading (``spacy.blank("en")``: a rule-based tokenizer), so it
builds offline and the same everywhere:

1. ``sentencizer``: sentences;
2. ``entity_ruler`` (phrases, case ignored): the findings of :mod:`node.monitoring.vocabulary` (the node's finding
   table, its synonyms, and "normal" phrases such as "heart size is normal" that by themselves deny a finding);
3. negspacy's ``negex`` twice (:mod:`node.monitoring.termsets`): a negation pass (``span._.negated``) and an
   uncertainty pass (``span._.uncertain``), each with NegEx's trigger, scope and termination rules.

A mention is *uncertain* when the uncertainty pass marks it, else *absent* when the negation pass does (or it is
a "normal" phrase), else *present*. A report's label of a finding is its strongest mention: present over uncertain
over absent; a finding the report never names is *not mentioned* (left out). Sections that say why and how the
study was made (indication, history, technique, comparison) are not read for findings ("rule out pneumonia" is a
question, not an answer); the view and side labels are read everywhere ("TECHNIQUE: PA and lateral views").
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from node.monitoring import termsets
from node.monitoring.vocabulary import (FINDINGS, NORMAL_PHRASES, SIDE_PARTS, VIEW_CONTEXT_AFTER, VIEW_CONTEXT_BEFORE,
                                        label_terms)

if TYPE_CHECKING:  # spaCy is imported when the pipeline is first built: processes that take no report never load it
    from spacy.language import Language
    from spacy.matcher import PhraseMatcher

PRESENT, ABSENT, UNCERTAIN = "present", "absent", "uncertain"
_RANK = {ABSENT: 0, UNCERTAIN: 1, PRESENT: 2}
#: Sections whose sentences are not findings (their headings, as written before a colon).
NOT_FINDINGS = ("indication", "indications", "history", "clinical history", "clinical information",
                "clinical indication", "reason for exam", "reason for examination", "reason for study", "technique",
                "comparison", "comparisons", "procedure", "examination", "exam", "clinical details", "request")
_HEADINGS = ("findings", "impression", "impressions", "conclusion", "conclusions", "opinion", "summary", "report",
             "result", "results", "addendum", "recommendation", "recommendations", *NOT_FINDINGS)
_HEADING_RE = re.compile(r"(?im)(?:^|(?<=[\s.;]))(" + "|".join(sorted((re.escape(h) for h in _HEADINGS), key=len,
                                                                         reverse=True)) + r")\s*:")


@dataclass(frozen=True)
class Mention:
    """One finding named in one sentence."""

    finding: str  # the finding's key
    status: str  # present | absent | uncertain
    text: str  # the words that named it


@dataclass(frozen=True)
class Extraction:
    """What one report says: per finding named, its label; per label set, the canonical values it names."""

    findings: dict[str, str] = field(default_factory=dict)
    labels: dict[str, list[str]] = field(default_factory=dict)
    sentences: int = 0


def _patterns() -> list[dict]:
    out: list[dict] = []
    for kind in FINDINGS:
        out += [{"label": kind.key, "pattern": term} for term in kind.terms]
    for key, phrases in NORMAL_PHRASES.items():
        out += [{"label": key, "pattern": p, "id": "normal"} for p in phrases]
    return out


def build_pipeline() -> "Language":
    """The extraction pipeline (offline: no model, no download)."""
    import spacy
    from negspacy.negation import Negex  # noqa: F401  (registers the "negex" factory)

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    ruler = nlp.add_pipe("entity_ruler", config={"phrase_matcher_attr": "LOWER", "overwrite_ents": True})
    ruler.add_patterns(_patterns())
    nlp.add_pipe("negex", name="negation", config={"neg_termset": termsets.negation_termset(),
                                                   "extension_name": "negated"})
    nlp.add_pipe("negex", name="uncertainty", config={"neg_termset": termsets.uncertainty_termset(),
                                                      "extension_name": "uncertain"})
    return nlp


_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def pipeline() -> "Language":
    """The process's one pipeline, built on first use (about a second)."""
    return build_pipeline()


def sections(text: str) -> list[tuple[str, str]]:
    """(heading in lower case or "", body) of each section of ``text``, in order."""
    out: list[tuple[str, str]] = []
    pos, heading = 0, ""
    for match in _HEADING_RE.finditer(text):
        body = text[pos:match.start()].strip()
        if body:
            out.append((heading, body))
        heading, pos = match.group(1).lower(), match.end()
    body = text[pos:].strip()
    if body:
        out.append((heading, body))
    return out


def _status(ent: Any) -> str:
    if ent._.uncertain:
        return UNCERTAIN
    if ent._.negated or ent.ent_id_ == "normal":
        return ABSENT
    return PRESENT


def mentions(text: str) -> list[list[Mention]]:
    """The mentions of each sentence of ``text`` (one piece of prose: no section handling)."""
    chunks = [c.strip() for c in re.split(r"[\r\n]+", text) if c.strip()]
    nlp = pipeline()
    out: list[list[Mention]] = []
    with _LOCK:  # spaCy's Language is not documented as thread-safe; extraction is cheap
        docs = list(nlp.pipe(chunks))
    for doc in docs:
        for sent in doc.sents:
            out.append([Mention(e.label_, _status(e), e.text) for e in sent.ents])
    return out


def combine(statuses: Iterable[tuple[str, str]]) -> dict[str, str]:
    """(finding, status) pairs -> finding: strongest status (present > uncertain > absent)."""
    best: dict[str, str] = {}
    for finding, status in statuses:
        if finding not in best or _RANK[status] > _RANK[best[finding]]:
            best[finding] = status
    return best


def extract(text: str, extra_label_terms: Mapping[str, Mapping[str, list[str]]] | None = None) -> Extraction:
    """Findings and labels of a whole report (see the module docstring)."""
    found: list[tuple[str, str]] = []
    n = 0
    for heading, body in sections(text):
        if heading in NOT_FINDINGS:
            continue
        for sentence in mentions(body):
            n += 1
            found += [(m.finding, m.status) for m in sentence]
    return Extraction(findings=combine(found), labels=labels_of(text, extra_label_terms), sentences=n)


# Labels ---------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _label_matcher(extra_key: str) -> tuple["PhraseMatcher", dict[str, tuple[str, str]]]:
    import json

    from spacy.matcher import PhraseMatcher

    extra = json.loads(extra_key)
    nlp = pipeline()
    matcher = PhraseMatcher(nlp.vocab, attr="LOWER")
    names: dict[str, tuple[str, str]] = {}
    for label_set, values in label_terms(extra).items():
        for value, words in values.items():
            phrases: list[str] = list(extra.get(label_set, {}).get(value, []))
            if label_set == "view":
                phrases += [f"{w} {c}" for w in words for c in (*VIEW_CONTEXT_AFTER, "and lat")]
                phrases += [f"{c} {w}" for w in words for c in VIEW_CONTEXT_BEFORE]
            elif label_set == "laterality":
                phrases += [f"{w} {p}" for w in words for p in SIDE_PARTS]
            else:
                phrases += list(words)
            rule = f"{label_set}:{value}"
            names[rule] = (label_set, value)
            matcher.add(rule, list(nlp.tokenizer.pipe(dict.fromkeys(phrases))))
    return matcher, names


def labels_of(text: str, extra: Mapping[str, Mapping[str, list[str]]] | None = None) -> dict[str, list[str]]:
    """Label set -> the canonical values ``text`` names ("PA and lateral views" -> view: [LATERAL, PA])."""
    import json

    matcher, names = _label_matcher(json.dumps(extra or {}, sort_keys=True))
    out: dict[str, set[str]] = {}
    with _LOCK:
        doc = pipeline().make_doc(text)
        for match_id, _start, _end in matcher(doc):
            label_set, value = names[doc.vocab.strings[match_id]]
            out.setdefault(label_set, set()).add(value)
    return {k: sorted(v) for k, v in sorted(out.items())}
