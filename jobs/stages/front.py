"""The stages every job starts with: read bytes, decode, detect faces, align them to 512x512."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import torch

from codeformer_core import align, codec, gray, storage
from codeformer_core.detect import DetectConfig, Detector
from codeformer_core.statuses import BAD_LANDMARKS, DETECT_ERROR, NO_FACE, OK, READ_ERROR, UNAVAILABLE
from jobs.stages.batches import Batch, clean, image_of, short_error, statuses, table


READ_THREADS = 16  # reads of one batch in flight at once: object stores answer each in tens of ms or more


def read_images(batch: Batch, attempts: int) -> pa.Table:
    """Each input's bytes; a failure that may pass is tried `attempts` times before it is `unavailable`."""

    def read(uri: str) -> tuple[bytes, str, str | None]:
        try:
            return storage.read_bytes(uri, attempts), OK, None
        except storage.ReadError as exc:
            return b"", UNAVAILABLE if exc.transient else READ_ERROR, str(exc)
        except Exception as exc:  # anything else a client may raise is this input's row, not the job's end
            return b"", READ_ERROR, short_error(exc)

    uris = [str(u) for u in batch["source_uri"]]
    with ThreadPoolExecutor(min(READ_THREADS, max(len(uris), 1))) as pool:
        data, status, error = zip(*pool.map(read, uris)) if uris else ((), (), ())
    return pa.table({**{k: list(v) for k, v in batch.items()}, "data": pa.array(data, pa.binary()), "status": list(status), "error": list(error)})


def decode_images(batch: Batch, max_pixels: int, aligned: bool, gray_test: bool = False) -> pa.Table:
    """Whole images keep their pixels; with `aligned`, each image is one face crop already. With
    `gray_test`, `is_gray` says which images are grey (their restored faces are made grey)."""
    status, error, width, height, pixels, crops, affines, grays = [], [], [], [], [], [], [], []
    for data, st, err in zip(batch["data"], batch["status"], batch["error"]):
        w = h = rgb = None
        if st == OK:
            decoded = codec.decode_image(data, max_pixels)
            st, err, w, h, rgb = decoded.status, decoded.error, decoded.width, decoded.height, decoded.rgb
        status.append(st)
        error.append(clean(err))
        width.append(w)
        height.append(h)
        grays.append(None if rgb is None else gray.is_gray(rgb))
        if aligned:
            pixels.append(None)
            crops.append([] if rgb is None else [align.as_aligned_face(rgb).tobytes()])
            affines.append([] if rgb is None else [align.resize_affine(w, h).reshape(-1).tolist()])
        else:
            pixels.append(None if rgb is None else rgb.tobytes())
    extra = ({"crops": crops, "affine": affines} if aligned else {}) | ({"is_gray": grays} if gray_test else {})
    return table(batch, drop=("data",), status=status, error=error, width=width, height=height, pixels=pixels, **extra)


class DetectFaces:
    """RetinaFace loaded once; finds faces in every readable image that has no manifest landmarks."""

    def __init__(self, config: DetectConfig, weights: str | None, weights_dir: str | None, synthetic: bool, device: str) -> None:
        self.detector = Detector.from_weights(config, torch.device(device), weights, weights_dir, 1 if synthetic else None)

    def __call__(self, batch: Batch) -> pa.Table:
        n = len(batch["status"])
        given = batch.get("manifest_landmarks")
        todo = [i for i in range(n) if batch["status"][i] == OK and (given is None or given[i] is None)]
        landmarks: list = [clean(given[i]) if given is not None and given[i] is not None else [] for i in range(n)]
        bbox: list = [[] for _ in range(n)]
        score: list = [[] for _ in range(n)]
        status, error = statuses(batch)
        if todo:
            images = [image_of(batch["pixels"][i], batch["width"][i], batch["height"][i]) for i in todo]
            try:
                found = self.detector.detect(images)
            except Exception as exc:  # e.g. out of memory: these rows fail, the job goes on
                found = [[] for _ in todo]
                for i in todo:
                    status[i], error[i] = DETECT_ERROR, short_error(exc)
            for i, faces in zip(todo, found):
                landmarks[i] = [f.landmarks.reshape(-1).tolist() for f in faces]
                bbox[i] = [f.box.tolist() for f in faces]
                score[i] = [f.score for f in faces]
        return table(batch, status=status, error=error, landmarks=landmarks, bbox=bbox, det_score=score)


def align_faces(batch: Batch) -> pa.Table:
    """Crop every face to 512x512; an image with unusable landmarks, or none, gets its own status."""
    status, error = statuses(batch)
    crops, affines = [], []
    # Without a detector stage (every input has manifest landmarks) the manifest's are the landmarks.
    given = batch["landmarks"] if "landmarks" in batch else batch["manifest_landmarks"]
    for i, st in enumerate(status):
        faces, mats = [], []
        points = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in clean(given[i]) or []]
        if st == OK and not points:
            status[i], error[i] = NO_FACE, None
        elif st == OK:
            w, h = int(batch["width"][i]), int(batch["height"][i])
            problems = [p for p in (align.landmark_problem(lm, w, h) for lm in points) if p]
            if problems:
                status[i], error[i] = BAD_LANDMARKS, f"{len(problems)} of {len(points)} faces: {problems[0]}"
            else:
                image = image_of(batch["pixels"][i], w, h)
                for lm in points:
                    affine = align.estimate_affine(lm)
                    faces.append(align.warp_face(image, affine).tobytes())
                    mats.append(affine.reshape(-1).tolist())
        crops.append(faces)
        affines.append(mats)
    return table(batch, status=status, error=error, crops=crops, affine=affines, landmarks=[clean(g) for g in given])
