"""Can ``torch.compile`` take the gradient engine's ``vmap`` path (per-cluster gradients in one
batched pass) on the study's diffusers UNet? Under ``train.compile`` the engine's vmapped
gradients run eager; compiling them was the lead for faster PCGrad/Nash steps.

The probe builds a small ``UNet2DModel`` of the study's block types (down, attention-down,
attention-up, up), computes k cluster gradients with ``torch.func.vmap(torch.func.grad(...))``
over ``functional_call`` — the engine's construction — eager and compiled, and prints whether
the compiled function traces, its largest relative gradient error against eager and both step
times. Runs in about a minute on a CPU (``--device cuda`` on a GPU).

    python benchmarks/vmap_compile_probe.py [--device cpu] [--batch 20] [--k 5]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--k", type=int, default=5)
    a = ap.parse_args()
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    dev = torch.device(a.device)
    model = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
        layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).to(dev)  # fmt: skip
    B, k = a.batch - a.batch % a.k, a.k
    x, noise = torch.randn(B, 3, 8, 8, device=dev), torch.randn(B, 3, 8, 8, device=dev)
    t = torch.randint(0, 1000, (B,), device=dev)
    params = {n: p.detach() for n, p in model.named_parameters()}
    index = torch.arange(B, device=dev).reshape(k, B // k)
    weight = torch.ones(k, B // k, device=dev)

    def cluster_sum(p, idx, w):  # the engine's closure: one cluster's loss sum
        out = torch.func.functional_call(model, p, (x[idx], t[idx])).sample
        losses = ((out - noise[idx]) ** 2).mean(dim=(1, 2, 3))
        return (losses * w).sum(), losses.detach()

    grads = torch.func.vmap(
        torch.func.grad(cluster_sum, has_aux=True), in_dims=(None, 0, 0), randomness="different"
    )

    def timed(fn) -> float:
        for _ in range(3):
            fn(params, index, weight)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            fn(params, index, weight)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / 10

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {dev}")
    eager, _ = grads(params, index, weight)
    compiled_fn = torch.compile(grads)
    try:
        compiled, _ = compiled_fn(params, index, weight)
    except Exception as e:  # the finding itself: report it, not a crash
        reason = str(e).strip().splitlines()
        print("compiled vmap path: does not trace")
        print("  " + "\n  ".join(line for line in reason if "NYI" in line or "Error" in line)[:800])
        print(f"eager vmap step: {timed(grads) * 1e3:.1f} ms")
        return 1
    err = max(
        float((eager[n] - compiled[n]).abs().max() / (eager[n].abs().max() + 1e-12)) for n in eager
    )
    te, tc = timed(grads), timed(compiled_fn)
    print(f"compiled vmap path: traces; max relative gradient error {err:.2e}")
    print(f"eager {te * 1e3:.1f} ms, compiled {tc * 1e3:.1f} ms, ratio {te / tc:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
