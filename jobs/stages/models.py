"""The model stages: restore faces with CodeFormer, measure them, paste them back, encode them."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import torch

from codeformer_core import codec, gray, paste
from codeformer_core.arcface import load_arcface
from codeformer_core.codec import PNG, Encoding
from codeformer_core.detect import Detector
from codeformer_core.measure import landmark_distances, measure_faces
from codeformer_core.parsing import FaceParser
from codeformer_core.restore import Restorer, Speed, ieee_fp32
from codeformer_core.upsample import Upsampler
from codeformer_core.statuses import MEASURE_ERROR, OK, RESTORE_ERROR
from jobs.stages.batches import FACES, Batch, clean, image_of, missing, short_error, statuses, table


class RestoreFaces:
    """CodeFormer loaded once; `restored` gets each row's faces restored, as raw pixels, made grey
    from their input crops where `is_gray` says the image is grey."""

    def __init__(self, weights: str, weights_dir: str | None, expected_sha256: str, device: str, speed: Speed, fidelity: float) -> None:
        self.restorer, info = Restorer.from_checkpoint(weights, device, speed, weights_dir)
        if info.sha256 != expected_sha256:
            raise RuntimeError(f"weights {weights} on this worker have sha256 {info.sha256}, the driver checked {expected_sha256}")
        self.fidelity = fidelity

    def __call__(self, batch: Batch) -> pa.Table:
        crops = batch["crops"]
        status, error = statuses(batch)
        try:
            restored = self.restorer.restore([face for faces in crops for face in faces], self.fidelity)
            nested = np.split(restored, np.cumsum([len(faces) for faces in crops])[:-1])
            for i, grey in enumerate(batch["is_gray"] if "is_gray" in batch else []):
                if clean(grey):
                    nested[i] = [gray.gray_restored(out, face) for out, face in zip(nested[i], crops[i])]
        except Exception as exc:  # a failed forward (e.g. out of memory) fails its rows, not the job
            nested = [[] for _ in crops]
            for i, faces in enumerate(crops):
                if len(faces):
                    status[i], error[i] = RESTORE_ERROR, short_error(exc)
        return table(batch, status=status, error=error, restored=nested)


class MeasureFaces:
    """`measures`: per face a JSON object of the no-reference `metrics` of its crop and, when the
    batch has `restored` faces, of its restoration, with the ArcFace identity similarity between the
    two (`identity`: ArcFace's load arguments) and their landmark distance (`lmd`: the detector's)."""

    def __init__(self, metrics: tuple[str, ...], identity: dict | None, lmd: dict | None, device: str, batch_size: int) -> None:
        self.device = torch.device(device)
        self.metrics = metrics
        self.batch_size = batch_size
        self.arcface = load_arcface(self.device, **identity) if identity else None
        self.detector = Detector.from_weights(device=self.device, **lmd) if lmd else None

    def __call__(self, batch: Batch) -> pa.Table:
        status, error = statuses(batch)
        has_restored = "restored" in batch
        todo = [(i, k) for i, crops in enumerate(batch["crops"]) if status[i] == OK for k in range(len(crops))]
        faces = [batch["crops"][i][k] for i, k in todo]
        restored = [batch["restored"][i][k] for i, k in todo] if has_restored else None
        measures: list[list[str]] = [[] for _ in status]
        extra: dict[str, list] = {}
        embeddings: list[list] = [[] for _ in status]
        # a job that takes videos keeps the restored faces' embeddings of frames: their tracks compare consecutive ones
        frames = "frame_index" in batch and has_restored and self.arcface is not None
        try:
            with ieee_fp32(self.device):  # ArcFace and the detector in float32 as their official code runs them
                measured = measure_faces(faces, restored, self.arcface, self.device, self.batch_size, self.metrics, embeddings=frames)
                if self.detector and restored is not None:
                    for values, lmd in zip(measured, landmark_distances(self.detector, faces, restored)):
                        values["lmd"] = lmd
            for (i, _), values in zip(todo, measured):
                embedding = values.pop("restored_embedding", None)
                if embedding is not None and not missing(batch["frame_index"][i]):
                    embeddings[i].append(embedding.tolist())
                measures[i].append(json.dumps(values))
        except Exception as exc:  # e.g. out of device memory: these images fail, the job goes on, their faces dropped
            failed = {i for i, _ in todo}
            for i in failed:
                status[i], error[i], measures[i], embeddings[i] = MEASURE_ERROR, short_error(exc), [], []
            extra = {c: [[] if i in failed else faces for i, faces in enumerate(batch[c])] for c in FACES if c in batch}
        extra |= {"restored_embeddings": embeddings} if frames else {}
        return table(batch, status=status, error=error, measures=measures, **extra)


class PasteFaces:
    """Each whole image with its restored faces pasted back (`pasted`, as `encoding` says); ParseNet masks with
    `parse`; with `upsampler` (Upsampler.from_weights' arguments but the device), Real-ESRGAN
    upsamples the background (`background`) and/or the restored faces (`faces`) before pasting."""

    def __init__(
        self, upscale: int, parse: bool, weights_dir: str | None, synthetic: bool, device: str, upsampler: dict | None, background: bool, faces: bool,
        encoding: Encoding,
    ) -> None:
        self.upscale, self.encoding = upscale, encoding
        self.device = torch.device(device)
        self.parser = FaceParser.from_weights(self.device, None, weights_dir, 1 if synthetic else None) if parse else None
        self.upsampler = Upsampler.from_weights(device=self.device, **upsampler)[0] if upsampler else None
        self.background, self.faces = background, faces

    def __call__(self, batch: Batch) -> pa.Table:
        """A video's frame is pasted even without a face, so that its restored video has every frame."""
        pasted = []
        for i, restored in enumerate(batch["restored"]):
            frame = "frame_index" in batch and not missing(batch["frame_index"][i]) and not missing(batch["pixels"][i])
            if len(restored) == 0 and not frame:
                pasted.append(None)
                continue
            image = image_of(batch["pixels"][i], batch["width"][i], batch["height"][i])
            faces = list(restored)
            if self.faces:
                faces = [self.upsampler.upsample(f) for f in faces]
            affines = [np.asarray(a, dtype=np.float64).reshape(2, 3) for a in batch["affine"][i]]
            masks = self.parser.masks(faces) if self.parser else None
            background = self.upsampler.upsample(image) if self.background else None
            pasted.append(codec.encode(paste.paste_faces(image, faces, affines, self.upscale, masks, background, self.faces), self.encoding))
        return table(batch, pasted=pasted)


def encode_faces(batch: Batch, columns: tuple[str, ...], encoding: Encoding = PNG) -> pa.Table:
    """The raw faces of `columns` as image files, in `encoded_<column>`; the whole images' pixels
    and the raw faces are dropped (nothing after needs them)."""
    encoded = {f"encoded_{c}": [[codec.encode(face, encoding) for face in faces] for faces in batch[c]] for c in columns}
    return table(batch, drop=("pixels", *FACES), **encoded)
