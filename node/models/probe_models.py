"""The probe's request and reading of the reply, per model (:mod:`node.models.probe`).

Each reads the reply with the model's own contract, exactly as the pipeline does, and says what it recognised
(rows or object, ``scaling_factor`` present, the 3D mask's affine kind and prompt axis) and what the node will do.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from node.config import EndpointSection, NodeConfig
from node.models.probe_inputs import chest_png, ct_volume, square_png

__all__ = ["PROBES"]


def _shape_of(body: Any) -> str:
    if isinstance(body, list):
        return f"rows ({len(body)} row{'s' if len(body) != 1 else ''})"
    if isinstance(body, dict):
        return f"object (keys {', '.join(sorted(body)[:6])})"
    return type(body).__name__


class _Probe:
    describe = ""

    def __init__(self, name: str, endpoint: EndpointSection, cfg: NodeConfig) -> None:
        self.name, self.endpoint, self.cfg = name, endpoint, cfg
        self.replies: list[Any] = []

    def score(self, client: Any, payload: dict, suffix: str) -> Any:
        reply = client.score(payload, request_id=f"dn-probe-{suffix}")
        self.replies.append(reply)
        return reply

    def call(self, client: Any) -> Any:  # pragma: no cover - every probe overrides it
        raise NotImplementedError

    def read(self, report: Any) -> None:  # pragma: no cover
        raise NotImplementedError


class CxrProbe(_Probe):
    width, height = 640, 512

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.describe = (f"a drawn frontal chest radiograph {self.width}x{self.height} PNG (PHI-free), no text "
                         f"inputs")

    def call(self, client: Any) -> Any:
        from node.models.cxrreportgen.contract import build_request

        return self.score(client, build_request(frontal_png=chest_png(self.width, self.height)), "cxr")

    def read(self, report: Any) -> None:
        from node.models.cxrreportgen.contract import denormalize_box, parse_response

        body = self.replies[0].body
        findings = parse_response(body)
        form = "rows, output as a JSON string (Microsoft's sample)" if isinstance(body, list) else \
            "object {output: [...]} (the product page)"
        boxes = [b for f in findings for b in f.boxes]
        report.reply["shape"] = f"{form}; {len(findings)} findings, {len(boxes)} boxes"
        if boxes:
            crop = [round(v) for v in denormalize_box(boxes[0], self.width, self.height, "center_crop")]
            full = [round(v) for v in denormalize_box(boxes[0], self.width, self.height, "full_image")]
            report.reply["boxes"] = (f"first box {[round(v, 3) for v in boxes[0]]} -> pixels {crop} if centre-crop normalised, {full} "
                                     f"if whole-image normalised (the probe cannot tell which: docs/endpoints.md, 'box frame')")
        report.node_will.append(f"write an SR and a GSPS per study; boxes mapped as box_reference "
                                f"{self.endpoint.box_reference}")


class InsightProbe(_Probe):
    texts = ("x-ray chest anteroposterior", "x-ray chest lateral")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.describe = (f"one drawn chest radiograph (512x512 PNG, PHI-free) and {len(self.texts)} label texts, "
                         f"3 rows, get_scaling_factor: true")

    def call(self, client: Any) -> Any:
        from node.models.medimageinsight.contract import InsightInput, build_request

        inputs = [InsightInput(key="probe-image", image=chest_png(512, 512))]
        inputs += [InsightInput(key=f"probe-text{i}", text=t) for i, t in enumerate(self.texts)]
        return self.score(client, build_request(inputs), "insight")

    def read(self, report: Any) -> None:
        from node.models.medimageinsight.contract import parse_response

        body = self.replies[0].body
        parsed = parse_response(body, n_images=1, n_texts=len(self.texts))
        kind = "rows, one per input (the mi2-deploy notebook)" if isinstance(body, list) else \
            "one object (the model document's example)"
        report.reply["shape"] = f"{kind}: {_shape_of(body)}; vectors of {parsed.image_features.shape[1]} numbers"
        labels = [r.name for r in self.cfg.rules if r.endpoint == self.name and (r.params or {}).get("labels")]
        configured = self.endpoint.scaling_factor
        if parsed.scaling_factor is not None:
            report.reply["scaling"] = f"scaling_factor {parsed.scaling_factor:g} in the reply"
            report.node_will.append("score labels with the reply's scaling_factor")
        elif configured is not None:
            report.reply["scaling"] = "no scaling_factor in the reply (asked for)"
            report.node_will.append(f"score labels with endpoints.{self.name}.scaling_factor {configured:g}")
        else:
            report.reply["scaling"] = "no scaling_factor in the reply (asked for), none configured"
            message = (f"rules with labels fail until endpoints.{self.name}.scaling_factor is set (the model "
                       f"document's example value: 4.516357)")
            if labels:
                report.problems.append(f"{message}: rules {labels}")
            else:
                report.warnings.append(message)
        report.node_will.append("store the embeddings (similar-case search) under the model version below")


class ParseProbe(_Probe):
    prompts = ("left lung", "right lung")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.describe = f"a drawn chest radiograph padded to 1024x1024 PNG (PHI-free), prompts {' & '.join(self.prompts)!r}"

    def call(self, client: Any) -> Any:
        from node.models.medimageparse.contract2d import build_request

        return self.score(client, build_request([square_png(1024)], list(self.prompts)), "parse")

    def read(self, report: Any) -> None:
        from node.models.medimageparse.contract2d import parse_response

        body = self.replies[0].body
        (answer,) = parse_response(body, n_prompts=len(self.prompts), n_images=1)
        values = sorted({int(v) for v in np.unique(answer.masks)})[:6]
        report.reply["shape"] = (f"{_shape_of(body)}; masks {list(answer.masks.shape)} {answer.masks.dtype} values "
                                 f"{values}; categories {answer.categories}")
        report.node_will.append("write one SEG per series, one segment per prompt, masks un-padded to the source")


class Parse3DProbe(_Probe):
    def __init__(self, *args: Any) -> None:
        from node.models.endpoint_settings import prompts_per_call

        super().__init__(*args)
        self.per_call = prompts_per_call(self.endpoint)
        self.prompts = ["left lung", "right lung"] if self.per_call > 1 else ["lung"]
        self.volume = ct_volume()
        shape = "x".join(str(n) for n in self.volume.data.shape)
        self.describe = (f"a drawn axial CT volume {shape} (HU, 0.8x0.8x5 mm, PHI-free) as .nii.gz, prompts "
                         f"{' & '.join(self.prompts)!r} in one call (prompts_per_call {self.per_call})")
        self.single: Any = None

    def call(self, client: Any) -> Any:
        from node.models.medimageparse.contract3d import build_request, joined

        self.client = client  # read() asks again one prompt per call when the joined reply does not match
        return self.score(client, build_request(self.volume.to_nifti_gz_bytes(), joined(self.prompts)), "ct3d")

    def read(self, report: Any) -> None:
        from converters.volume_header import VolumeError
        from converters.volume_mask import place_mask
        from node.models.medimageparse.contract3d import build_request, read_reply

        answer = read_reply(self.replies[0].body)
        labels = answer.labels()
        report.reply["shape"] = (f"{answer.form}: {list(answer.data.shape)} {answer.data.dtype}"
                                 + (f", labels {labels[:8]}" if answer.prompt_axis == "none" else "")
                                 + (f", text_features {answer.text_features}" if answer.text_features else ""))
        split = answer.per_prompt(len(self.prompts))
        axis = {"none": "none (a 3-D mask: a label map when several prompts)", "first": "first (N, i, j, k)",
                "last": "last (i, j, k, N)"}[answer.prompt_axis]
        if split is not None:
            report.reply["prompts"] = f"prompt axis {axis}: one mask per prompt for {len(self.prompts)} sent"
            if len(self.prompts) > 1:
                report.node_will.append(f"send up to {self.per_call} prompts per call and split the reply per prompt")
                if answer.prompt_axis == "none":
                    report.warnings.append("a label map holds one label per voxel: overlapping targets (a lesion "
                                           f"inside an organ) need endpoints.{self.name}.prompts_per_call: 1")
        else:
            report.reply["prompts"] = (f"prompt axis {axis} does not match the {len(self.prompts)} prompts sent: the "
                                       f"node falls back to one prompt per call")
            report.node_will.append(f"call once per prompt (set endpoints.{self.name}.prompts_per_call: 1 to skip "
                                    f"the joined call)")
            single = self.score(self.client, build_request(self.volume.to_nifti_gz_bytes(), self.prompts[0]), "ct3d-1")
            answer = read_reply(single.body)
            split = answer.per_prompt(1)
            report.reply["single"] = (f"one prompt per call: {answer.form} {list(answer.data.shape)}, HTTP "
                                      f"{single.status} in {single.elapsed_seconds:.3f} s")
            if split is None:
                report.problems.append(f"a one-prompt call is answered with {answer.form} of shape "
                                       f"{list(answer.data.shape)}: not one mask")
                return
        mask = split[0]
        try:
            _, kind, how = place_mask(mask, answer.affine, answer.declared, self.volume)
        except VolumeError as exc:
            report.reply["affine"] = "no usable affine and not the request's shape"
            report.problems.append(f"the mask cannot be placed on the volume: {exc}")
            return
        report.reply["affine"] = {"input": "the request's own affine", "reoriented": "a reorientation of the "
                                  "request grid with a correct affine", "resampled": "another grid covering the "
                                  "volume, with its affine"}.get(kind, f"{kind}: no usable affine")
        if how == "affine":
            report.node_will.append("place each mask by its affine onto the source slices")
        else:
            report.node_will.append("place each mask by voxel order (its shape equals the request's), with a "
                                    "WARNING once")


PROBES: dict[str, Callable[[str, EndpointSection, NodeConfig], _Probe]] = {
    "cxrreportgen": CxrProbe,
    "medimageinsight": InsightProbe,
    "medimageparse": ParseProbe,
    "medimageparse3d": Parse3DProbe,
}


def dumps(doc: Any) -> str:
    """JSON for ``--json`` (numpy numbers as plain ones)."""
    return json.dumps(doc, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))
