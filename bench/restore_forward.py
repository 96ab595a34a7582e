"""Forward time per face of our CodeFormer, fp32, on this machine's CPU threads.

Synthetic weights (golden rule, seed 1): speed does not depend on the weight values.
Prints the median of --repeats timed runs after one warm-up, per batch size.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time

import torch

from codeformer_core.weights import build_codeformer, synthetic_codeformer_state_dict


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4], help="batch sizes to time (default: 1 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per batch size after one warm-up (default: 3)")
    parser.add_argument("--fidelity", type=float, default=0.5, help="fidelity weight w (default: 0.5)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads (default: all)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = build_codeformer(synthetic_codeformer_state_dict(seed=1))
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, fp32, w={args.fidelity}")
    for batch in args.batch_sizes:
        x = torch.randn(batch, 3, 512, 512, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
        times = []
        with torch.inference_mode():
            for run in range(args.repeats + 1):
                start = time.perf_counter()
                model(x, w=args.fidelity, adain=True)
                if run:
                    times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(
            f"batch {batch}: median {median:.2f} s per batch, {median / batch:.2f} s per face "
            f"({batch / median:.3f} faces/s), runs {[round(t, 2) for t in times]}, peak RSS {peak_rss_gb():.2f} GB"
        )


if __name__ == "__main__":
    main()
