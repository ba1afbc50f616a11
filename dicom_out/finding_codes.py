"""CXRReportGen sentences -> a coded Finding (DCM 121071 value), the sentence itself kept as text.

A small, documented table: the first keyword found in the sentence (lower case, word boundaries) gives the code.
A sentence that negates its finding ("No pneumothorax.", "without effusion", "no evidence of ...") gets the
generic code, never the disease's: a coded "Pneumothorax" for "No pneumothorax" would say the opposite of the
text. So does a sentence no keyword matches.

=====================  =========================================  ==========================
keywords               concept                                    code
=====================  =========================================  ==========================
pneumothorax           Pneumothorax                               SCT 36118008
effusion               Pleural effusion                           SCT 60046008
cardiomegaly,          Cardiomegaly                               SCT 8186001
enlarged heart,
heart is enlarged
edema, oedema          Pulmonary edema                            SCT 19242006
consolidation          Lung consolidation                         SCT 95436008
atelectasis,           Atelectasis                                SCT 46621007
atelectatic
pneumonia              Pneumonia                                  SCT 233604007
emphysema              Pulmonary emphysema                        SCT 87433001
nodule, nodular        Nodule                                     SCT 27925004
mass                   Mass                                       SCT 4147007
fracture               Fracture of bone                           SCT 125605004
opacity, opacities,    opacity                                    RADLEX RID28530
opacification
(anything else)        Clinical finding                           SCT 404684003
=====================  =========================================  ==========================
"""

from __future__ import annotations

import re
from typing import Final

from pydicom.sr.coding import Code

#: The code of a sentence that names no known finding, or negates it.
GENERIC_FINDING: Final = Code("404684003", "SCT", "Clinical finding")

#: (keywords, code), first match wins: specific findings before the generic "opacity".
FINDING_TABLE: Final[tuple[tuple[tuple[str, ...], Code], ...]] = (
    (("pneumothorax", "pneumothoraces"), Code("36118008", "SCT", "Pneumothorax")),
    (("effusion", "effusions"), Code("60046008", "SCT", "Pleural effusion")),
    (("cardiomegaly", "enlarged heart", "heart is enlarged"), Code("8186001", "SCT", "Cardiomegaly")),
    (("edema", "oedema"), Code("19242006", "SCT", "Pulmonary edema")),
    (("consolidation", "consolidations"), Code("95436008", "SCT", "Lung consolidation")),
    (("atelectasis", "atelectatic"), Code("46621007", "SCT", "Atelectasis")),
    (("pneumonia",), Code("233604007", "SCT", "Pneumonia")),
    (("emphysema",), Code("87433001", "SCT", "Pulmonary emphysema")),
    (("nodule", "nodules", "nodular"), Code("27925004", "SCT", "Nodule")),
    (("mass", "masses"), Code("4147007", "SCT", "Mass")),
    (("fracture", "fractures"), Code("125605004", "SCT", "Fracture of bone")),
    (("opacity", "opacities", "opacification"), Code("RID28530", "RADLEX", "opacity")),
)

_NEGATION: Final = re.compile(
    r"^\s*(no|none|without|negative for|absent)\b|\b(no|without|free of|negative for|no evidence of|resolved)\b",
    re.IGNORECASE,
)


def is_negated(sentence: str) -> bool:
    """True when the sentence denies a finding ("No pneumothorax.", "Lungs are clear without effusion")."""
    return bool(_NEGATION.search(sentence))


def finding_code(sentence: str) -> Code:
    """The Finding code of a report sentence (see the module's table); :data:`GENERIC_FINDING` otherwise."""
    if is_negated(sentence):
        return GENERIC_FINDING
    text = sentence.lower()
    for keywords, code in FINDING_TABLE:
        if any(re.search(rf"\b{re.escape(k)}\b", text) for k in keywords):
            return code
    return GENERIC_FINDING
