"""Micro-benchmark of the batched view augmentation: two views of a uint8 batch, views per second.

    python3 examples/bench_augment.py [--device cpu|cuda] [--batch 256] [--repeats 20] [--threads N]
"""

import argparse
import time

import torch

from contrastive_cli.augment import ViewAugment, center_view
from contrastive_cli.spec import AugmentSpec

RECIPE = dict(crop_scale=(0.08, 1.0), jitter_p=0.8, jitter=(0.4, 0.4, 0.2, 0.1), jitter_random_order=True,
              gray_p=0.2, blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2))  # BYOL's (blur is off below 64 px)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn, device, repeats: int) -> float:
    """Best of `repeats` timed calls: the least disturbed by other processes sharing the CPU."""
    for _ in range(3):  # warm-up: allocator, kernels, thread pools
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads [default: torch's]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = AugmentSpec(**RECIPE)
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch}")
    for channels, side in ((1, 28), (3, 32), (3, 96)):
        images = torch.randint(0, 256, (args.batch, channels, side, side), dtype=torch.uint8, device=device)
        views = [ViewAugment(spec, side, MEAN, STD, view=v) for v in (0, 1)]
        generator = torch.Generator(device=device).manual_seed(0)
        pair = seconds_per_call(lambda: [view(images, generator) for view in views], device, args.repeats)
        evaluation = seconds_per_call(lambda: center_view(images, side, MEAN, STD), device, args.repeats)
        print(f"{args.batch}x{channels}x{side}x{side}: two views {pair * 1e3:7.1f} ms/batch = "
              f"{2 * args.batch / pair:9.0f} views/s   (center_view {args.batch / evaluation:9.0f} images/s)")


if __name__ == "__main__":
    main()
