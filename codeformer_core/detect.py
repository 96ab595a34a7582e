"""Batched face detection with facexlib's RetinaFace.

The network is built and loaded once; `Detector.detect` takes many images. Each image is
rescaled as the official helper does (short side to `input_size`, Lanczos), padded on the
right and bottom to a multiple of PAD_MULTIPLE with the network's mean colour (zero after
mean subtraction, as the convolutions' own zero padding), and images of the same padded size
share one forward pass. Decoding, thresholds and NMS follow facexlib's `detect_faces`.
Coordinates come back in the original image.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from dataclasses import dataclass

from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from codeformer_core.weights import load_network

# torchvision (through facexlib's RetinaFace) adds 2.5 s to every process that imports it; it is
# imported when a detector is built, so that the processes that never detect start without it.
if TYPE_CHECKING:
    from facexlib.detection.retinaface import RetinaFace

MODELS = {"retinaface_resnet50": "resnet50", "retinaface_mobile0.25": "mobile0.25"}
PAD_MULTIPLE = 32
MEAN_BGR = (104.0, 117.0, 123.0)


@dataclass(frozen=True)
class DetectConfig:
    model: str = "retinaface_resnet50"
    conf_threshold: float = 0.8
    nms_threshold: float = 0.4
    min_face_size: float = 0.0  # shorter box side, original pixels
    max_faces: int | None = None  # keep the highest-scoring ones
    only_center_face: bool = False
    input_size: int | None = 640  # short side the image is rescaled to; None keeps the original size
    batch_size: int = 8


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # (4,) x1, y1, x2, y2
    score: float
    landmarks: np.ndarray  # (5, 2)


def build_retinaface(model: str, device: torch.device) -> RetinaFace:
    """The network with facexlib's initial weights; `load_network` gives it a checkpoint's."""
    if model not in MODELS:
        raise ValueError(f"unknown detector {model!r}; choose one of {', '.join(MODELS)}")
    from facexlib.detection.retinaface import RetinaFace

    with warnings.catch_warnings():  # facexlib builds its backbone with torchvision's deprecated `pretrained=False`
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        return RetinaFace(network_name=MODELS[model], half=False, device=device).eval()


def rescale_factor(height: int, width: int, input_size: int | None) -> tuple[float, int, int]:
    """(original/resized scale, resized height, resized width), as FaceRestoreHelper computes them."""
    if input_size is None:
        return 1.0, height, width
    scale = min(height, width) / input_size
    return scale, int(height / scale), int(width / scale)


def center_face_index(boxes: np.ndarray, height: int, width: int) -> int:
    centers = (boxes[:, :2] + boxes[:, 2:4]) / 2
    return int(np.argmin(np.linalg.norm(centers - np.array([width / 2, height / 2]), axis=1)))


class Detector:
    def __init__(self, net: RetinaFace, config: DetectConfig, device: torch.device) -> None:
        self.net = net
        self.config = config
        self.device = device
        self.mean = torch.tensor(MEAN_BGR, device=device).view(1, 3, 1, 1)

    @classmethod
    def from_weights(
        cls,
        config: DetectConfig,
        device: torch.device,
        weights: str | None = None,
        weights_dir: str | os.PathLike[str] | None = None,
        synthetic_seed: int | None = None,
    ) -> Detector:
        """Official weights resolved by name (or `weights`: a path or s3:// URI), or synthetic ones."""
        net = build_retinaface(config.model, torch.device("cpu"))
        load_network(net, weights or config.model, weights_dir, synthetic_seed)
        return cls(net.to(device), config, device)

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces of each RGB uint8 image, highest score first."""
        raw = self.candidates(images)
        return [self._select(boxes, scores, landmarks, img.shape[:2]) for img, (boxes, scores, landmarks) in zip(images, raw)]

    def candidates(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per image: boxes (N,4), scores (N,), landmarks (N,10) over the confidence threshold, after NMS,
        highest score first, in original coordinates."""
        prepared = [self._prepare(img) for img in images]
        buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (padded, _, _) in enumerate(prepared):
            buckets[padded.shape[:2]].append(i)
        results: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [None] * len(images)  # type: ignore[list-item]
        for indices in buckets.values():
            for start in range(0, len(indices), self.config.batch_size):
                chunk = indices[start : start + self.config.batch_size]
                batch = np.stack([prepared[i][0] for i in chunk])
                for i, found in zip(chunk, self._forward(batch)):
                    scale = prepared[i][1]
                    boxes, scores, landmarks = found
                    results[i] = (boxes * scale, scores, landmarks * scale)
        return results

    def _prepare(self, rgb: np.ndarray) -> tuple[np.ndarray, float, tuple[int, int]]:
        height, width = rgb.shape[:2]
        scale, h, w = rescale_factor(height, width, self.config.input_size)
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if (h, w) != (height, width):
            bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LANCZOS4)
        ph, pw = -(-h // PAD_MULTIPLE) * PAD_MULTIPLE, -(-w // PAD_MULTIPLE) * PAD_MULTIPLE
        padded = np.empty((ph, pw, 3), np.float32)
        padded[:] = MEAN_BGR
        padded[:h, :w] = bgr
        return padded, scale, (h, w)

    def _forward(self, batch: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        import torchvision
        from facexlib.detection.retinaface_utils import PriorBox, batched_decode, batched_decode_landm

        _, height, width, _ = batch.shape
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2) - self.mean
        with torch.inference_mode():
            loc, conf, landms = self.net(x)
        priors = PriorBox(self.net.cfg, image_size=(height, width)).forward().to(self.device).unsqueeze(0)
        variance = self.net.cfg["variance"]
        box_scale = torch.tensor([width, height] * 2, dtype=torch.float32, device=self.device)
        landm_scale = torch.tensor([width, height] * 5, dtype=torch.float32, device=self.device)
        boxes = batched_decode(loc, priors, variance) * box_scale
        landmarks = batched_decode_landm(landms, priors, variance) * landm_scale
        scores = conf[:, :, 1]
        out = []
        for b, s, lm in zip(boxes, scores, landmarks):
            keep = s > self.config.conf_threshold
            b, s, lm = b[keep], s[keep], lm[keep]
            order = torch.argsort(s, descending=True)
            b, s, lm = b[order], s[order], lm[order]
            kept = torchvision.ops.nms(b.float().cpu(), s.float().cpu(), self.config.nms_threshold)
            out.append((b.cpu().numpy()[kept], s.cpu().numpy()[kept], lm.cpu().numpy()[kept]))
        return out

    def _select(self, boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray, shape: tuple[int, int]) -> list[Face]:
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        keep = sides >= self.config.min_face_size
        boxes, scores, landmarks = boxes[keep], scores[keep], landmarks[keep]
        if self.config.only_center_face and len(boxes):
            i = center_face_index(boxes, *shape)
            boxes, scores, landmarks = boxes[i : i + 1], scores[i : i + 1], landmarks[i : i + 1]
        if self.config.max_faces is not None:
            boxes, scores, landmarks = boxes[: self.config.max_faces], scores[: self.config.max_faces], landmarks[: self.config.max_faces]
        return [Face(box=b.astype(np.float64), score=float(s), landmarks=lm.reshape(5, 2).astype(np.float64)) for b, s, lm in zip(boxes, scores, landmarks)]
