"""Aligned 512x512 face crops with their landmarks, and nothing else: the first step of an FFHQ-style dataset.

    python -m jobs.crop --input URI --output URI [--det-threshold 0.9] [--min-face-size 128]

Output under --output: images/ (one row per input, with a status) and crops/ (one row per face:
landmarks, the affine from the image to the crop, the crop as PNG). A rerun resumes.
"""

import functools
import sys
from dataclasses import asdict

import pyarrow as pa

import schemas.crop_images
import schemas.crops
from jobs import cli, ledger
from jobs.driver import Job, main
from jobs.pipeline import stage
from jobs.shared_stages import check_weights, front_stages
from jobs.stages import models
from jobs.stages.batches import clean


def write_crops(batch, output: str, run: dict):
    return ledger.stage(batch, output, "crops", functools.partial(crop_tables, run=run))


def crop_tables(batch, run: dict) -> tuple[ledger.Tables, ledger.Files]:
    landmarks = batch["landmarks"] if "landmarks" in batch else [None] * len(batch["image_id"])
    rows = [
        {"image_id": str(i), "source_uri": str(u), "face_index": k, "landmarks": clean(lm[k]) if lm is not None else None,
         "affine": clean(affine[k]), "crop": {"bytes": crop, "path": f"{i}_{k}.png"}}
        for i, u, lm, affine, crops in zip(batch["image_id"], batch["source_uri"], landmarks, batch["affine"], batch["encoded_crops"])
        for k, crop in enumerate(crops)
    ]
    faces = [len(c) for c in batch["encoded_crops"]]
    images = ledger.images_table(batch, schemas.crop_images.SCHEMA, num_faces=faces, code_version=[run["code_version"]] * len(faces))
    return {"images": images, "crops": pa.Table.from_pylist(rows, schema=schemas.crops.SCHEMA)}, {}


def preflight(common, detection, detecting: bool) -> dict:
    check_weights(common, None, detection if detecting else None, None)
    return {"aligned": common.aligned, "max_pixels": common.max_pixels, "detect": asdict(detection.config), "synthetic_weights": common.synthetic}


def stages(common, detection, ctx):
    return front_stages(common, detection, ctx) + [stage(models.encode_faces, columns=("crops",)), stage(write_crops, output=common.output, run=ctx.record)]


JOB = Job("crop", __doc__, ("images", "crops"), "faces", "cropped", cli.add_detect_flags, lambda args, _: cli.detection(args), preflight, stages)

if __name__ == "__main__":
    sys.exit(main(JOB))
