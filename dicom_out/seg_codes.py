"""Segmented Property Category / Type codes (DICOM CID 7150 / 7151) for the segments the node writes.

MedImageParse (2D) classifies every prompt into one of 16 ``text_features`` categories (seed document); the table
:data:`MIP_CATEGORY_CODES` maps each to a (category, type) pair of SNOMED CT codes:

=====================  ==================================  =========================================
text_features          Segmented Property Category         Segmented Property Type
=====================  ==================================  =========================================
liver                  Anatomical Structure 91723000       Liver 10200004
lung                   Anatomical Structure                Lung 39607008
kidney                 Anatomical Structure                Kidney 64033007
pancreas               Anatomical Structure                Pancreas 15776009
heart anatomies        Anatomical Structure                Heart 80891009
brain anatomies        Anatomical Structure                Brain 12738006
eye anatomies          Anatomical Structure                Eye 81745001
vessel                 Anatomical Structure                Blood vessel 59820001
other organ            Anatomical Structure                Organ 91772007
tumor                  Morph. Abnormal Structure 49755003  Neoplasm 108369006
infection              Morph. Abnormal Structure           Inflammation 409774005 (nearest to infection)
other lesion           Morph. Abnormal Structure           Lesion 52988006
fluid disturbance      Body Substance 91720002             Body fluid 32457005
other abnormality      Morph. Abnormal Structure           Morphologically abnormal structure 49755003
histology structure    Tissue 85756007                     Tissue 85756007
other                  local 99DAINODE "OTHER" (Other)     local 99DAINODE "OTHER" (Other)
=====================  ==================================  =========================================

Documented choices: "other abnormality" uses the general SCT concept (the category's own code, as type);
"histology structure" (cells, glands in pathology slides) uses Tissue for both; "other" has no standard code
(NOTES), so it gets a private code of the node's own scheme ``99DAINODE`` (private designators start with "99").
An unknown category string is treated as "other".

MedImageParse 3D returns no category: :func:`codes_for_prompt` picks codes from keywords of the prompt
(abnormalities first, so "liver tumor" is a Neoplasm; then organs), with an optional ``category`` (one of the 16
names) that fixes the category and, where the prompt names no more specific structure of that category, the type.
"""

from __future__ import annotations

import re

from pydicom.sr.coding import Code

__all__ = [
    "ANATOMICAL_STRUCTURE",
    "MORPHOLOGICALLY_ABNORMAL_STRUCTURE",
    "TISSUE",
    "BODY_SUBSTANCE",
    "OTHER",
    "LOCAL_SCHEME",
    "MIP_CATEGORIES",
    "MIP_CATEGORY_CODES",
    "codes_for_category",
    "codes_for_prompt",
]

#: The node's private coding scheme designator (for concepts without a standard code).
LOCAL_SCHEME = "99DAINODE"

ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")
TISSUE = Code("85756007", "SCT", "Tissue")
BODY_SUBSTANCE = Code("91720002", "SCT", "Body Substance")
OTHER = Code("OTHER", LOCAL_SCHEME, "Other")


def _sct(value: str, meaning: str) -> Code:
    return Code(value, "SCT", meaning)


LIVER = _sct("10200004", "Liver")
LUNG = _sct("39607008", "Lung")
KIDNEY = _sct("64033007", "Kidney")
PANCREAS = _sct("15776009", "Pancreas")
HEART = _sct("80891009", "Heart")
BRAIN = _sct("12738006", "Brain")
EYE = _sct("81745001", "Eye")
BLOOD_VESSEL = _sct("59820001", "Blood vessel")
ORGAN = _sct("91772007", "Organ")
NEOPLASM = _sct("108369006", "Neoplasm")
LESION = _sct("52988006", "Lesion")
INFLAMMATION = _sct("409774005", "Inflammation")
BODY_FLUID = _sct("32457005", "Body fluid")
ABNORMAL_STRUCTURE = _sct("49755003", "Morphologically abnormal structure")

#: The 16 MedImageParse ``text_features`` categories, in the order of the model documentation.
MIP_CATEGORIES: tuple[str, ...] = (
    "liver", "lung", "kidney", "pancreas", "heart anatomies", "brain anatomies", "eye anatomies", "vessel",
    "other organ", "tumor", "infection", "other lesion", "fluid disturbance", "other abnormality",
    "histology structure", "other",
)

MIP_CATEGORY_CODES: dict[str, tuple[Code, Code]] = {
    "liver": (ANATOMICAL_STRUCTURE, LIVER),
    "lung": (ANATOMICAL_STRUCTURE, LUNG),
    "kidney": (ANATOMICAL_STRUCTURE, KIDNEY),
    "pancreas": (ANATOMICAL_STRUCTURE, PANCREAS),
    "heart anatomies": (ANATOMICAL_STRUCTURE, HEART),
    "brain anatomies": (ANATOMICAL_STRUCTURE, BRAIN),
    "eye anatomies": (ANATOMICAL_STRUCTURE, EYE),
    "vessel": (ANATOMICAL_STRUCTURE, BLOOD_VESSEL),
    "other organ": (ANATOMICAL_STRUCTURE, ORGAN),
    "tumor": (MORPHOLOGICALLY_ABNORMAL_STRUCTURE, NEOPLASM),
    "infection": (MORPHOLOGICALLY_ABNORMAL_STRUCTURE, INFLAMMATION),
    "other lesion": (MORPHOLOGICALLY_ABNORMAL_STRUCTURE, LESION),
    "fluid disturbance": (BODY_SUBSTANCE, BODY_FLUID),
    "other abnormality": (MORPHOLOGICALLY_ABNORMAL_STRUCTURE, ABNORMAL_STRUCTURE),
    "histology structure": (TISSUE, TISSUE),
    "other": (OTHER, OTHER),
}
assert tuple(MIP_CATEGORY_CODES) == MIP_CATEGORIES

#: Prompt keywords (matched at word starts, first table row that matches wins) -> (category, type).
#: Abnormalities come before organs so that "liver tumor" is a neoplasm, not the liver.
_PROMPT_KEYWORDS: tuple[tuple[tuple[str, ...], tuple[Code, Code]], ...] = (
    (("tumor", "tumour", "neoplas", "cancer", "carcinoma", "malignan", "metasta", "mass", "glioma", "enhancing"),
     (MORPHOLOGICALLY_ABNORMAL_STRUCTURE, NEOPLASM)),
    (("nodule",), (MORPHOLOGICALLY_ABNORMAL_STRUCTURE, _sct("27925004", "Nodule"))),
    (("cyst",), (MORPHOLOGICALLY_ABNORMAL_STRUCTURE, _sct("441457006", "Cyst"))),
    (("lesion",), (MORPHOLOGICALLY_ABNORMAL_STRUCTURE, LESION)),
    (("infect", "inflamm", "pneumonia", "covid", "opacit", "consolidat"),
     (MORPHOLOGICALLY_ABNORMAL_STRUCTURE, INFLAMMATION)),
    (("effusion", "fluid", "edema", "oedema", "ascites"), (BODY_SUBSTANCE, BODY_FLUID)),
    (("liver", "hepat"), (ANATOMICAL_STRUCTURE, LIVER)),
    (("lung", "pulmonary"), (ANATOMICAL_STRUCTURE, LUNG)),
    (("kidney", "renal"), (ANATOMICAL_STRUCTURE, KIDNEY)),
    (("spleen", "splenic"), (ANATOMICAL_STRUCTURE, _sct("78961009", "Spleen"))),
    (("pancrea",), (ANATOMICAL_STRUCTURE, PANCREAS)),
    (("heart", "cardiac", "ventric", "atri", "myocard"), (ANATOMICAL_STRUCTURE, HEART)),
    (("brain", "cerebr"), (ANATOMICAL_STRUCTURE, BRAIN)),
    (("eye", "retina", "optic"), (ANATOMICAL_STRUCTURE, EYE)),
    (("aorta", "aortic"), (ANATOMICAL_STRUCTURE, _sct("15825003", "Aorta"))),
    (("vessel", "vascular", "artery", "arteries", "vein", "vena"), (ANATOMICAL_STRUCTURE, BLOOD_VESSEL)),
    (("stomach", "gastric"), (ANATOMICAL_STRUCTURE, _sct("69695003", "Stomach"))),
    (("gallbladder", "gall bladder"), (ANATOMICAL_STRUCTURE, _sct("28231008", "Gallbladder"))),
    (("bladder",), (ANATOMICAL_STRUCTURE, _sct("89837001", "Urinary bladder"))),
    (("prostate",), (ANATOMICAL_STRUCTURE, _sct("41216001", "Prostate"))),
    (("esophag", "oesophag"), (ANATOMICAL_STRUCTURE, _sct("32849002", "Esophagus"))),
    (("adrenal",), (ANATOMICAL_STRUCTURE, _sct("23451007", "Adrenal gland"))),
    (("colon",), (ANATOMICAL_STRUCTURE, _sct("71854001", "Colon"))),
    (("bone", "vertebra", "rib", "femur", "skull"), (ANATOMICAL_STRUCTURE, _sct("272673000", "Bone structure"))),
    (("cell", "gland", "nucle"), (TISSUE, TISSUE)),
    (("organ",), (ANATOMICAL_STRUCTURE, ORGAN)),
)


def codes_for_category(category: str) -> tuple[Code, Code]:
    """(category, type) for one of MedImageParse's 16 ``text_features`` values (case-insensitive).

    Unknown values (a new model version, a typo) give the "other" codes rather than failing the result.
    """
    return MIP_CATEGORY_CODES.get((category or "").strip().lower(), MIP_CATEGORY_CODES["other"])


def _keyword_codes(prompt: str) -> tuple[Code, Code] | None:
    text = (prompt or "").lower()
    for keywords, codes in _PROMPT_KEYWORDS:
        for keyword in keywords:
            if re.search(r"\b" + re.escape(keyword), text):
                return codes
    return None


def codes_for_prompt(prompt: str, category: str | None = None) -> tuple[Code, Code]:
    """(category, type) for a prompt, e.g. for MedImageParse 3D whose reply has no category.

    Without ``category``: the first keyword row of the table that matches the prompt; no match -> "other".
    With ``category`` (one of :data:`MIP_CATEGORIES`): its category code always; the type comes from the prompt when
    the prompt's keywords give a type of the same category (e.g. "spleen" with "other organ" -> Spleen), else the
    category's own type.
    """
    from_prompt = _keyword_codes(prompt)
    if category is None:
        return from_prompt if from_prompt is not None else MIP_CATEGORY_CODES["other"]
    fixed = codes_for_category(category)
    if from_prompt is not None and from_prompt[0] == fixed[0] and fixed[0] != OTHER:
        # Keep the category's own type when it is already the more specific of the two (e.g. "tumor").
        generic = {ORGAN, ABNORMAL_STRUCTURE, LESION, TISSUE, BODY_FLUID, OTHER}
        if fixed[1] in generic or from_prompt[1] == fixed[1]:
            return fixed[0], from_prompt[1]
    return fixed
