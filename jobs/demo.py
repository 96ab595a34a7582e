"""`make demo`: run the restore job on a few generated face images, locally.

Uses the official CodeFormer weights when they can be found or downloaded, and synthetic
weights otherwise, with a loud note.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2

from codeformer_core.samples import synthetic_face
from codeformer_core.weights import WeightsError, codeformer_weights
from jobs import restore
from jobs.driver import main as run_job

SAMPLES = ((0, 512), (1, 512), (2, 384))


def write_samples(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, size in SAMPLES:
        path = folder / f"face_{seed:02d}.png"
        if not path.exists():
            cv2.imwrite(str(path), cv2.cvtColor(synthetic_face(seed, size), cv2.COLOR_RGB2BGR))


def main(root: str = "demo_output") -> int:
    inputs, output = Path(root) / "input", Path(root) / "restore"
    write_samples(inputs)
    args = ["--input", str(inputs), "--output", str(output), "--aligned", "--batch-size", "1"]
    try:
        codeformer_weights("codeformer")
    except WeightsError as exc:
        print(f"Official CodeFormer weights are not available here:\n{exc}\n", file=sys.stderr)
        print("=" * 78 + "\nFALLING BACK TO SYNTHETIC WEIGHTS: the pipeline runs for real, restorations are noise.\n" + "=" * 78, file=sys.stderr)
        args.append("--synthetic-weights")
    print(f"Demo: {len(SAMPLES)} generated aligned faces in {inputs} -> {output}", file=sys.stderr)
    code = run_job(restore.JOB, args)
    if code == 0:
        print(
            "\nLook at the results:\n"
            f"  .venv/bin/python -c \"import pandas as pd; print(pd.read_parquet('{output}/images'))\"\n"
            f"  .venv/bin/python -c \"import pandas as pd; f = pd.read_parquet('{output}/faces'); "
            f"open('restored.png', 'wb').write(f.restored[0]['bytes'])\""
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
