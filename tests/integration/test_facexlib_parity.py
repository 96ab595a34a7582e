"""Our batched detector, alignment and paste-back against facexlib on the same synthetic weights."""

import cv2
import numpy as np
import pytest
import torch
from facexlib.detection import init_detection_model
from facexlib.parsing.parsenet import ParseNet
from facexlib.utils.face_restoration_helper import FaceRestoreHelper

from codeformer_core.align import estimate_affine, warp_face
from codeformer_core.detect import DetectConfig, Detector, build_retinaface
from codeformer_core.paste import paste_faces
from codeformer_core.samples import synthetic_face
from codeformer_core.weights import synthetic_state_dict

SEED = 3
CPU = torch.device("cpu")
FILES = {"retinaface_resnet50": "detection_Resnet50_Final.pth", "retinaface_mobile0.25": "detection_mobilenet0.25_Final.pth"}
# Random weights saturate resnet50's face scores at 1.0 and squeeze mobile0.25's into 0.4-0.55;
# scaling the classification heads spreads them so a threshold can pick a few dozen boxes.
CLASS_HEAD_SCALE = {"retinaface_resnet50": 0.01, "retinaface_mobile0.25": 10.0}


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """Synthetic weights under facexlib's official file names, so facexlib loads them offline."""
    directory = tmp_path_factory.mktemp("facexlib_weights")
    for model, filename in FILES.items():
        state_dict = synthetic_state_dict(build_retinaface(model, CPU), SEED)
        scale = CLASS_HEAD_SCALE[model]
        torch.save({k: v * scale if k.startswith("ClassHead") else v for k, v in state_dict.items()}, directory / filename)
    torch.save(synthetic_state_dict(ParseNet(in_size=512, out_size=512, parsing_ch=19), SEED), directory / "parsing_parsenet.pth")
    return directory


def scene(height: int, width: int, seed: int) -> np.ndarray:
    """An RGB image with face-like patches at a few places."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), rng.integers(30, 220, 3), np.uint8)
    for _ in range(3):
        size = int(rng.integers(64, min(height, width) // 2))
        y, x = int(rng.integers(0, height - size)), int(rng.integers(0, width - size))
        img[y : y + size, x : x + size] = synthetic_face(int(rng.integers(1000)), size)
    return img


IMAGES = [scene(480, 640, 1), scene(480, 640, 2), scene(640, 480, 3), scene(320, 320, 4)]


def reference(net, images, conf, nms):
    """facexlib, one image at a time."""
    with torch.no_grad():
        return [net.detect_faces(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), conf, nms) for img in images]


def threshold_for(net, image, count):
    """A confidence threshold that lets about `count` raw boxes through on random weights."""
    scores = reference(net, [image], 0.0, 1.0)[0][:, 4]
    return float(np.sort(scores)[::-1][count])


@pytest.mark.parametrize("model", list(FILES))
@pytest.mark.parametrize("nms", [1.0, 0.4], ids=["before_nms", "after_nms"])
def test_batched_detection_equals_facexlib_per_image(weights_dir, model, nms):
    net = init_detection_model(model, half=False, device=CPU, model_rootpath=str(weights_dir))
    conf = threshold_for(net, IMAGES[0], 40)
    ours = Detector(net, DetectConfig(model=model, conf_threshold=conf, nms_threshold=nms, input_size=None), CPU)

    got = ours.candidates(IMAGES)
    want = reference(net, IMAGES, conf, nms)

    assert sum(len(w) for w in want) >= 20
    for (boxes, scores, landmarks), expected in zip(got, want):
        assert len(boxes) == len(expected)
        ours_rows = np.hstack([boxes, scores[:, None], landmarks])
        # Order-independent: sort both by score, then by box corner. Tolerance: a batched forward
        # sums in another order (~1e-6 relative), and box decoding's exp() of random-weight
        # regressions (boxes up to 1e5 px here) magnifies that to ~1e-4 relative.
        key = lambda rows: rows[np.lexsort((rows[:, 0], rows[:, 1], -np.round(rows[:, 4], 4)))]
        np.testing.assert_allclose(key(ours_rows), key(expected.astype(np.float64)), atol=0.02, rtol=1e-3)


def test_detector_rescales_like_the_helper(weights_dir):
    """Short side to 640 (Lanczos), as FaceRestoreHelper does; coordinates back in the original image."""
    net = init_detection_model("retinaface_resnet50", half=False, device=CPU, model_rootpath=str(weights_dir))
    image = scene(240, 360, 9)  # -> 640x960, no padding needed
    resized = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), (960, 640), interpolation=cv2.INTER_LANCZOS4)
    conf = threshold_for(net, cv2.cvtColor(resized, cv2.COLOR_BGR2RGB), 30)
    with torch.no_grad():
        want = net.detect_faces(resized, conf, 0.4).astype(np.float64)
    want[:, :4] *= 240 / 640
    want[:, 5:] *= 240 / 640

    boxes, scores, landmarks = Detector(net, DetectConfig(conf_threshold=conf, input_size=640), CPU).candidates([image])[0]

    assert len(want) >= 5 and len(boxes) == len(want)
    got = np.hstack([boxes, scores[:, None], landmarks])
    np.testing.assert_allclose(got, want, atol=0.02, rtol=1e-3)


def landmarks_of(rng, count, height, width):
    """Plausible five-point sets: the template, scaled, turned and moved into the image."""
    from codeformer_core.align import FFHQ_TEMPLATE_512

    out = []
    for _ in range(count):
        angle, scale = rng.uniform(-0.5, 0.5), rng.uniform(0.2, 0.6)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * scale
        center = rng.uniform([0.1 * width, 0.1 * height], [0.9 * width, 0.9 * height])
        out.append((FFHQ_TEMPLATE_512 - 256) @ rot.T + center + rng.normal(0, 1.5, (5, 2)))
    return out


@pytest.fixture(scope="module")
def helper(weights_dir):
    return FaceRestoreHelper(1, face_size=512, det_model="retinaface_resnet50", use_parse=False, device=CPU, model_rootpath=str(weights_dir))


def run_helper(helper, image_rgb, landmarks, restored_rgb=None, upscale=1):
    helper.clean_all()
    helper.upscale_factor = upscale
    helper.read_image(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    helper.all_landmarks_5 = [np.asarray(lm) for lm in landmarks]
    helper.align_warp_face()
    if restored_rgb is None:
        return [cv2.cvtColor(c, cv2.COLOR_BGR2RGB) for c in helper.cropped_faces]
    for face in restored_rgb:
        helper.add_restored_face(cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    helper.get_inverse_affine()
    return cv2.cvtColor(helper.paste_faces_to_input_image(), cv2.COLOR_BGR2RGB)


def test_aligned_crops_equal_the_helpers(helper):
    rng = np.random.default_rng(5)
    image = scene(600, 800, 6)
    landmarks = landmarks_of(rng, 4, 600, 800)

    want = run_helper(helper, image, landmarks)
    got = [warp_face(image, estimate_affine(lm)) for lm in landmarks]

    for g, w in zip(got, want):
        assert np.abs(g.astype(int) - w.astype(int)).max() <= 1


@pytest.mark.parametrize("upscale", [1, 2])
def test_paste_back_equals_the_helpers(helper, upscale):
    rng = np.random.default_rng(7 + upscale)
    image = scene(500, 700, 8)
    landmarks = landmarks_of(rng, 3, 500, 700) + [np.array([[20, 30], [60, 32], [40, 55], [25, 75], [55, 76]], float)]
    restored = [synthetic_face(50 + i, degrade=False) for i in range(len(landmarks))]

    want = run_helper(helper, image, landmarks, restored, upscale)
    got = paste_faces(image, restored, [estimate_affine(lm) for lm in landmarks], upscale=upscale)

    assert got.shape == want.shape == (500 * upscale, 700 * upscale, 3)
    assert np.abs(got.astype(int) - want.astype(int)).mean() <= 1


def test_paste_back_with_parsing_mask_equals_the_helpers(weights_dir):
    from codeformer_core.parsing import FaceParser

    helper = FaceRestoreHelper(1, face_size=512, det_model="retinaface_resnet50", use_parse=True, device=CPU, model_rootpath=str(weights_dir))
    rng = np.random.default_rng(11)
    image = scene(500, 700, 12)
    landmarks = landmarks_of(rng, 2, 500, 700)
    restored = [synthetic_face(60 + i, degrade=False) for i in range(len(landmarks))]
    parser = FaceParser(helper.face_parse.eval(), CPU)

    want = run_helper(helper, image, landmarks, restored)
    got = paste_faces(image, restored, [estimate_affine(lm) for lm in landmarks], parse_masks=parser.masks(restored))

    assert np.abs(got.astype(int) - want.astype(int)).mean() <= 1
    assert np.abs(got.astype(int) - image.astype(int)).mean() > 1  # the faces did go in
