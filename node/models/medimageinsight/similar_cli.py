"""``dicom-node similar``: the stored images most similar to a stored one or to a DICOM file.

``--sop-instance-uid UID`` queries with the stored embedding of that instance (it comes back first, score 1.0);
``--image FILE.dcm`` converts the file as the pipeline does and embeds it through the configured MedImageInsight
endpoint (``--endpoint NAME`` when there are several), then queries the index of the model version that answered.
The index is brought up to date with the database first (:meth:`node.similar.EmbeddingIndex.sync`). Output: one
line per hit, ``rank score study_uid series_uid sop_instance_uid`` (``--json`` for a list of objects), and the
query time on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from node.config import NodeConfig
from node.store.embeddings import instance_embedding, newest_model
from node.models.medimageinsight.similar import EmbeddingIndex, index_dir, search_similar


def _embed_file(cfg: NodeConfig, path: str, endpoint_name: str | None) -> tuple[str, str, np.ndarray]:
    from converters.insight import read_insight_image
    from node.invoke.client import EndpointClient
    from node.models.medimageinsight.contract import InsightInput, build_request, parse_response
    from node.models.medimageinsight.pipeline import MODEL_NAME

    names = [n for n, ep in cfg.endpoints.items() if ep.model == "medimageinsight"]
    if endpoint_name:
        if endpoint_name not in names:
            raise SystemExit(f"no medimageinsight endpoint {endpoint_name!r}; configured: {names}")
        names = [endpoint_name]
    if not names:
        raise SystemExit("no endpoint with model: medimageinsight in the configuration")
    if len(names) > 1:
        raise SystemExit(f"several medimageinsight endpoints {names}: choose one with --endpoint")
    rule = next((r for r in cfg.rules if r.endpoint == names[0]), None)
    resize = rule.params.get("resize") if rule is not None else None
    try:
        image = read_insight_image(path, resize=int(resize) if resize else None)
    except ValueError as exc:
        raise SystemExit(f"{path}: not an image for the model: {exc}") from None
    with EndpointClient(names[0], cfg.endpoints[names[0]]) as client:
        reply = client.score(build_request([InsightInput(key="query", image=image.png)]))
    vector = parse_response(reply.body, n_images=1).image_features[0]
    from node.models.versions import resolve

    version = resolve(names[0], cfg.endpoints[names[0]], reply.model_version, reply.deployment)[0]
    return MODEL_NAME, version, vector


def cmd_similar(args: argparse.Namespace, cfg: NodeConfig) -> int:
    from node.store.state import Store

    store = Store.open(cfg.database_url, sqlite_synchronous=cfg.database.sqlite_synchronous)
    if args.sop_instance_uid:
        found = instance_embedding(store.engine, args.sop_instance_uid)
        if found is None:
            print(f"no embedding stored for SOP Instance UID {args.sop_instance_uid}", file=sys.stderr)
            return 1
        meta, vector = found
        model_name, model_version = meta["model_name"], meta["model_version"]
    else:
        model_name, model_version, vector = _embed_file(cfg, args.image, args.endpoint)
    if newest_model(store.engine) is None:
        print("no embeddings stored yet", file=sys.stderr)
        return 1
    index = EmbeddingIndex(index_dir(cfg.node_dir, model_name, model_version), dim=int(len(vector)))
    added = index.sync(store.engine, model_name, model_version)
    index.load()
    t0 = time.perf_counter()
    hits = search_similar(store.engine, index, vector, args.k)
    elapsed_ms = (time.perf_counter() - t0) * 1000
    if args.json:
        print(json.dumps([{"rank": i, "score": round(h.score, 6), "study_uid": h.study_uid,
                           "series_uid": h.series_uid, "sop_instance_uid": h.sop_instance_uid}
                          for i, h in enumerate(hits, start=1)], indent=2))
    else:
        for i, h in enumerate(hits, start=1):
            print(f"{i:3d}  {h.score:.4f}  study {h.study_uid}  series {h.series_uid}  sop {h.sop_instance_uid}")
    print(f"{len(hits)} hit(s) among {index.count} {model_name} {model_version} embeddings in {elapsed_ms:.1f} ms"
          f"{f' ({added} indexed now)' if added else ''}", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    """Register ``similar`` on the ``dicom-node`` sub-command parser."""
    s = sub.add_parser("similar", help="most similar stored images (MedImageInsight embeddings)")
    s.add_argument("--config", required=True)
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--sop-instance-uid", help="query with the stored embedding of this instance")
    which.add_argument("--image", help="a DICOM file, embedded through the configured endpoint")
    s.add_argument("--endpoint", default=None, help="the medimageinsight endpoint for --image (if several)")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--json", action="store_true")
