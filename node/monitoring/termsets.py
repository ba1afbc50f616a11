"""The trigger phrases of the extraction's two NegEx passes (negspacy): negation and uncertainty.

Both start from negspacy's ``en_clinical`` termset (Chapman et al.'s NegEx lists) and add what radiology reports
say: a finding that "has resolved" is absent; "no change in the right effusion" still has the effusion (a pseudo
negation); "cannot exclude", "may represent", "versus" make a finding uncertain. The phrases that carry uncertainty
through a negation word ("cannot exclude") are pseudo negations of the negation pass, so that pass leaves them to
the uncertainty pass. negspacy's own lists are copied, never changed in place.
"""

from __future__ import annotations

from negspacy.termsets import termset

_BASE = termset("en_clinical").get_patterns()

#: "cannot exclude a small effusion": uncertain, not negated.
UNCERTAIN_NEGATIONS = (
    "cannot exclude", "can not exclude", "cannot be excluded", "can not be excluded", "not be excluded",
    "cannot rule out", "can not rule out", "cannot be ruled out", "can not be ruled out", "not ruled out",
    "not be ruled out", "not excluded", "not entirely excluded", "not been excluded", "difficult to exclude",
    "not been ruled out", "no definite evidence against",
)

#: Changes that leave the finding in place ("no change in the right effusion", "no interval change").
UNCHANGED = (
    "no change", "no interval change", "no significant change", "no significant interval change",
    "without interval change", "without significant change", "without change", "not significantly changed",
    "no definite change", "no appreciable change", "no substantial change",
)


def _merge(*lists: list[str] | tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(p for seq in lists for p in seq))


def negation_termset() -> dict[str, list[str]]:
    """NegEx triggers for "the finding is absent"."""
    preceding = [p for p in _BASE["preceding_negations"] if p not in ("versus", "evaluate for")]
    return {
        "pseudo_negations": _merge(_BASE["pseudo_negations"], UNCERTAIN_NEGATIONS, UNCHANGED,
                                   ("not only", "no further", "gram negative")),
        "preceding_negations": _merge(preceding, (
            "no definite", "no convincing", "no focal", "no acute", "no new", "no evidence for", "no residual",
            "no significant", "no large", "no appreciable", "no visible", "no radiographic evidence of",
            "no findings of", "no findings to suggest", "without evidence of", "without", "resolution of",
            "interval resolution of", "resolved", "clearing of", "interval clearing of", "resolving",
            "no longer", "not seen", "negative for", "absence of", "there is no", "there are no", "nor")),
        "following_negations": _merge(_BASE["following_negations"], (
            "has resolved", "have resolved", "resolved", "is resolved", "are resolved", "has cleared",
            "have cleared", "has nearly resolved", "is no longer seen", "are no longer seen", "no longer seen",
            "no longer visualized", "no longer visible", "is no longer present", "not seen", "is not seen",
            "are not seen", "not identified", "is not identified", "are not identified", "not present",
            "is absent", "are absent", "not visualized", "not appreciated", "is not appreciated", "not evident",
            "is not evident", "is gone", "not demonstrated", "is not demonstrated", "unlikely", "is unlikely")),
        "termination": _merge(_BASE["termination"], (
            ";", "there is", "there are", "with the exception of", "otherwise", "whereas", "while")),
    }


def uncertainty_termset() -> dict[str, list[str]]:
    """NegEx triggers (used the NegEx way: trigger, then scope) for "the finding may be there"."""
    return {
        "pseudo_negations": ["no doubt", "without doubt", "not likely", "unlikely"],
        "preceding_negations": _merge(UNCERTAIN_NEGATIONS, (
            "possible", "possibly", "probable", "probably", "likely", "may represent", "may be", "might be",
            "could represent", "could be", "may reflect", "could reflect", "may indicate", "suspicious for",
            "suspected", "suspect", "concerning for", "concern for", "questionable", "question of", "suggestive of",
            "suggests", "suggesting", "suggestion of", "differential diagnosis includes", "differential includes",
            "versus", "vs", "equivocal", "borderline", "presumed", "presumably", "raising the possibility of",
            "possibility of", "cannot distinguish", "indeterminate", "vague", "may have", "worrisome for",
            "would be difficult to exclude", "not excluded", "maybe", "evaluate for", "correlate for",
            "questionably", "favor", "favored", "may")),
        "following_negations": [
            "is possible", "are possible", "is not excluded", "are not excluded", "cannot be excluded",
            "can not be excluded", "cannot be ruled out", "not ruled out", "is suspected", "are suspected",
            "not entirely excluded", "is questioned", "versus", "vs", "is likely", "are likely", "is probable",
            "is not excluded", "remains possible", "is a possibility", "is considered", "could be considered",
            "not be excluded", "is equivocal", "is questionable", "cannot be entirely excluded"],
        "termination": _merge(_BASE["termination"], (";", "otherwise", "whereas", "while")),
    }
