"""The stage declarations jobs share, and the checks of the weights they need before work starts."""

from __future__ import annotations

from codeformer_core.weights import WeightsInfo, WeightsNotFoundError, codeformer_weights, resolve
from jobs.cli import Detection, Measures, Restoration
from jobs.pipeline import Context, Stage, stage
from jobs.resources import MODEL
from jobs.stages import front, models


def front_stages(common, detection: Detection, ctx: Context, restoring: bool = False) -> list[Stage]:
    """Read, decode (with a job's video flags, videos too: a row per kept frame) and, for whole
    images, detect (where no manifest landmarks are given) and align; `restoring` tests each image
    for grey, as restoration needs."""
    found = [stage(front.read_images, attempts=common.read_attempts, http=common.http)]
    if common.sampling:
        found.append(stage(front.decode_inputs, max_pixels=common.max_pixels, aligned=common.aligned, sampling=common.sampling, frames_per_batch=ctx.block, gray_test=restoring))
    else:
        found.append(stage(front.decode_images, max_pixels=common.max_pixels, aligned=common.aligned, gray_test=restoring))
    if ctx.detecting:
        found.append(stage(front.DetectFaces, MODEL, 1, detection.config.batch_size, config=detection.config, weights=detection.weights,
                           weights_dir=common.weights_dir, synthetic=ctx.synthetic, device=ctx.place.device))
    if not common.aligned:
        found.append(stage(front.align_faces))
    return found


def restore_stage(common, r: Restoration, ctx: Context, expected_sha256: str) -> Stage:
    return stage(models.RestoreFaces, MODEL, 2, weights=r.weights, weights_dir=common.weights_dir, expected_sha256=expected_sha256,
                 device=ctx.place.device, speed=r.speed, fidelity=r.fidelity)


def measure_stage(common, m: Measures, ctx: Context, lmd: Detection | None = None) -> Stage:
    """`lmd`: the detector with which to measure the landmark distance between each face and its restoration."""
    seed = 1 if ctx.synthetic else None
    identity = {"weights": m.arcface_weights, "weights_dir": common.weights_dir, "synthetic_seed": seed} if m.identity else None
    lmd = {"config": lmd.config, "weights": lmd.weights, "weights_dir": common.weights_dir, "synthetic_seed": seed} if lmd else None
    return stage(models.MeasureFaces, MODEL, 1, metrics=m.metrics, identity=identity, lmd=lmd, device=ctx.place.device, batch_size=ctx.block)


def check_weights(
    common, restoration: Restoration | None, detector: Detection | None, measures: Measures | None, parse: bool = False
) -> WeightsInfo | None:
    """Find every checkpoint the run will load (`detector` when one runs), so that a missing one
    stops the job before any work; the CodeFormer weights' provenance."""
    weights = codeformer_weights(restoration.weights, common.weights_dir)[1] if restoration else None
    if common.synthetic:
        return weights
    for spec in ([detector.spec] if detector else []) + (["parsenet"] if parse else []):
        if spec:
            resolve(spec, weights_dir=common.weights_dir)
    if measures and measures.identity:
        try:
            resolve(measures.arcface_weights or "arcface", weights_dir=common.weights_dir)
        except WeightsNotFoundError as exc:
            raise WeightsNotFoundError(f"{exc}\nIdentity similarity needs ArcFace; --no-identity goes on without it.") from None
    return weights
