"""MTL-behaviour logs and every figure of antdiff.plots (rendered headless, checked as PNGs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from antdiff import NoiseSchedule, TaskClusters
from antdiff import plots as P
from antdiff.analysis import (
    FIDMeasurement,
    TaskAffinity,
    TimestepBins,
    compute_ntg,
    read_training_log,
)

T = 1000
K = 4
SCHEDULE = NoiseSchedule.from_name("linear", T)


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def write_run(
    root, balancer: str = "pcgrad", lines: int = 20, corrupt_tail: bool = True, bins: int = 4
):
    """A run directory as the trainer writes it: config, clusters, metrics with balancer
    records (UW log-variances, Nash α, PCGrad cosine matrices), losses in ``bins`` fixed bins of
    t (``bin_losses``: 0.3/(b+1)/(n+1), the last bin empty on the first line) and evaluation
    lines."""
    root.mkdir(parents=True, exist_ok=True)
    clusters = TaskClusters.uniform(T, K)
    (root / "clusters.json").write_text(clusters.to_json())
    (root / "config.yaml").write_text(f"ant:\n  enabled: true\n  balancer: {balancer}\n  k: {K}\n")
    out = []
    for n in range(lines):
        step = 50 * (n + 1)
        rec = {"log_vars": [-0.1 * n * i for i in range(K)]}
        if balancer == "nash":
            rec = {"alpha": [1.0 + 0.1 * i + 0.01 * n for i in range(K)]}
        if balancer == "pcgrad":
            # Pair (0, 3) always conflicts, (0, 2) every other line, the rest never.
            cos = np.full((K, K), 0.5)
            np.fill_diagonal(cos, 1.0)
            cos[0, 3] = cos[3, 0] = -0.2
            if n % 2 == 0:
                cos[0, 2] = cos[2, 0] = -0.1
            rec = {"cosine": cos.tolist()}
        binned = {}
        if bins:
            binned = {
                "bin_losses": [0.3 / (b + 1) / (n + 1) for b in range(bins - 1)]
                + [None if n == 0 else 0.3 / bins / (n + 1)],
                "bin_counts": [32] * (bins - 1) + [0 if n == 0 else 32],
            }
        out.append(
            json.dumps(
                {
                    **binned,
                    "step": step,
                    "loss": 0.1 / (n + 1),
                    "cluster_losses": [0.2 / (i + 1) / (n + 1) for i in range(K - 1)] + [None],
                    "counts": [32] * K,
                    "weights": [0.25] * K,
                    "balancer": rec,
                    "lr": 1e-4,
                    "grad_norm": 1.0,
                    "it_per_s": 10.0,
                }
            )
        )
        if n % 5 == 4:
            out.append(
                json.dumps({"step": step, "eval": {"fid": 100.0 / (n + 1), "n": 500, "floor": 3.0}})
            )
    text = "\n".join(out) + "\n"
    if corrupt_tail:
        text += '{"step": 99999, "loss": 0.'  # a line cut short by a crash
    (root / "metrics.jsonl").write_text(text)
    return root


def test_read_training_log(tmp_path):
    log = read_training_log(write_run(tmp_path / "uw", "uw"))
    assert len(log) == 20 and log.k == K and log.skipped_lines == 1
    assert log.clusters == TaskClusters.uniform(T, K) and log.balancer_name == "uw"
    assert np.isnan(log.cluster_losses[:, -1]).all()  # null -> NaN
    w = log.uw_weights()
    np.testing.assert_allclose(w[3], 0.5 * np.exp([0.0, 0.3, 0.6, 0.9]))
    assert log.nash_alpha() is None and log.conflicts() is None
    s, f = log.eval_series("fid")
    assert s.tolist() == [250, 500, 750, 1000] and f[0] == pytest.approx(20.0)
    assert log.eval_metrics() == ["fid", "floor"]


def test_uw_stationary_weights_are_k_over_twice_the_trailing_mean_loss(tmp_path):
    log = read_training_log(write_run(tmp_path / "uw", "uw"))
    L = np.array([[0.2 / (i + 1) / (n + 1) for i in range(K - 1)] for n in range(20)])
    st = log.uw_stationary_weights(window=3)
    # row n: k / (2 * mean of rows n-2..n); the first rows average what exists
    np.testing.assert_allclose(st[10, : K - 1], K / (2 * L[8:11].mean(axis=0)))
    np.testing.assert_allclose(st[0, : K - 1], K / (2 * L[0]))
    np.testing.assert_allclose(st[1, : K - 1], K / (2 * L[:2].mean(axis=0)))
    assert np.isnan(st[:, -1]).all()  # a cluster with no logged loss has no stationary point
    np.testing.assert_allclose(log.uw_stationary_weights(window=1)[:, 0], K / (2 * L[:, 0]))
    # Kendall's form without /k settles at 1/(2 L_i)
    cfg = tmp_path / "uw" / "config.yaml"
    cfg.write_text(cfg.read_text() + "  balancer_params:\n    divide_by_k: false\n")
    np.testing.assert_allclose(
        read_training_log(tmp_path / "uw").uw_stationary_weights(window=1)[:, 0], 1 / (2 * L[:, 0])
    )
    assert read_training_log(write_run(tmp_path / "pc", "pcgrad")).uw_stationary_weights() is None
    with pytest.raises(ValueError, match="window"):
        log.uw_stationary_weights(window=0)


def test_conflict_frequencies_from_pcgrad_records(tmp_path):
    log = read_training_log(write_run(tmp_path / "pc", "pcgrad"))
    c = log.conflicts()
    assert c.shape == (20, K, K) and np.isnan(c[0, 1, 1])
    steps, freq = log.conflict_frequency(window=4)
    assert freq[-1, 0, 3] == 1.0 and freq[-1, 1, 2] == 0.0
    assert freq[-1, 0, 2] == pytest.approx(0.5)
    assert freq[0, 0, 2] == 1.0  # the window starts with the first line
    vs = log.conflict_vs_distance()
    pair = {(a, b): (d, f) for a, b, d, f in zip(vs["a"], vs["b"], vs["distance"], vs["frequency"])}
    assert pair[(0, 3)] == (750.0, 1.0) and pair[(0, 2)] == (500.0, 0.5) and pair[(0, 1)][1] == 0.0


def test_conflict_pairs_and_matrices_are_both_understood(tmp_path):
    root = tmp_path / "pairs"
    write_run(root, "uw", lines=2, corrupt_tail=False)
    lines = [json.loads(s) for s in (root / "metrics.jsonl").read_text().splitlines()]
    lines[0]["balancer"] = {"conflict_pairs": [[0, 1]]}
    lines[1]["balancer"] = {"conflicts": [[0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]}
    (root / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    c = read_training_log(root).conflicts()
    assert c[0, 0, 1] == 1 and c[0, 0, 3] == 0 and c[1, 0, 3] == 1 and c[1, 0, 1] == 0


def test_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no metrics.jsonl"):
        read_training_log(tmp_path)


def test_mtl_behaviour_plots_render(tmp_path):
    pc = read_training_log(write_run(tmp_path / "pc", "pcgrad"))
    uw = read_training_log(write_run(tmp_path / "uw", "uw"))
    nash = read_training_log(write_run(tmp_path / "nash", "nash"))
    assert _is_png(P.plot_cluster_losses(uw, tmp_path / "f" / "losses.png"))
    assert _is_png(P.plot_balancer_weights(uw, tmp_path / "f" / "uw.png"))
    assert _is_png(P.plot_balancer_weights(nash, tmp_path / "f" / "nash.png"))
    assert _is_png(P.plot_balancer_weights(pc, tmp_path / "f" / "generic.png"))
    assert _is_png(P.plot_conflicts(pc, tmp_path / "f" / "conflicts.png"))
    assert _is_png(P.plot_eval_curves({"uw": uw, "pcgrad": pc}, tmp_path / "f" / "fid.png"))
    with pytest.raises(ValueError, match="conflict"):
        P.plot_conflicts(uw, tmp_path / "f" / "none.png")
    with pytest.raises(ValueError, match="kid"):
        P.plot_eval_curves({"uw": uw}, tmp_path / "f" / "kid.png", metric="kid")


def test_affinity_and_ntg_plots_render(tmp_path):
    i = np.arange(10)
    A = np.exp(-np.abs(i[:, None] - i[None, :]) / 3.0)
    A[0, 5] = A[5, 0] = -0.3  # negative cosines switch to a diverging colour map
    aff = TaskAffinity(
        A, A[None], np.ones((1, 10)), TimestepBins.uniform(T, 10), "sketch", 4096, 8, 0
    )
    assert _is_png(P.plot_affinity(aff, tmp_path / "aff.png", SCHEDULE))
    assert _is_png(P.plot_affinity(aff, tmp_path / "aff_t.png"))
    assert _is_png(P.plot_affinity_vs_distance(aff, tmp_path / "aff_d.png", SCHEDULE))
    # a constant matrix has no Spearman ρ (nor p): the panel says so instead of failing
    flat = TaskAffinity(np.ones((4, 4)), np.ones((1, 4, 4)), np.ones((1, 4)),
                        TimestepBins.uniform(T, 4), "exact", None, 8, 0)  # fmt: skip
    assert _is_png(P.plot_affinity_vs_distance(flat, tmp_path / "flat.png", SCHEDULE))
    single = TaskAffinity(
        np.eye(3),
        np.eye(3)[None],
        np.ones((1, 3)),
        TimestepBins.singletons([0, 500, 999], T),
        "exact",
        None,
        8,
        0,
    )
    assert _is_png(P.plot_affinity(single, tmp_path / "single.png", SCHEDULE))
    ms = [
        FIDMeasurement(10.0, 0, n=100, floor=2.0),
        FIDMeasurement(9.0, 0, (0, 499)),
        FIDMeasurement(11.0, 0, (500, 999)),
    ]
    t1 = compute_ntg(ms)
    t2 = compute_ntg(
        [
            FIDMeasurement(8.0, 0),
            FIDMeasurement(8.5, 0, (0, 499)),
            FIDMeasurement(7.0, 0, (500, 999)),
        ]
    )
    assert _is_png(P.plot_ntg(t1, tmp_path / "ntg1.png"))
    assert _is_png(P.plot_ntg({"vanilla": t1, "ANT-UW": t2}, tmp_path / "ntg2.png"))
    assert _is_png(P.plot_clusters(TaskClusters.uniform(T, 5), SCHEDULE, tmp_path / "clusters.png"))


def test_conflicts_from_the_real_pcgrad_record(tmp_path):
    """The reader understands what antdiff.mtl's PCGrad logs (cosine matrix with null for
    absent clusters, and the list of conflicting pairs)."""
    import torch

    from antdiff.mtl import make_balancer

    bal = make_balancer("pcgrad", K)
    G = torch.eye(K, dtype=torch.float64) * 2.0
    G[0, 3] = G[3, 0] = -0.5
    G[1, 2] = G[2, 1] = 0.3
    bal.weights(G, torch.ones(K), torch.ones(K, dtype=torch.bool))
    rec = bal.record()
    assert [0, 3] in rec["conflicts"]
    absent = make_balancer("pcgrad", K)
    present = torch.tensor([True, True, False, True])
    Ga = G.clone()
    Ga[2, :] = Ga[:, 2] = 0.0  # an absent cluster has no gradient
    absent.weights(Ga, torch.tensor([1.0, 1.0, 0.0, 1.0]), present)
    root = write_run(tmp_path / "real", "uw", lines=2, corrupt_tail=False)
    lines = [json.loads(s) for s in (root / "metrics.jsonl").read_text().splitlines()]
    lines[0]["balancer"], lines[1]["balancer"] = rec, absent.record()
    (root / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    c = read_training_log(root).conflicts()
    assert c[0, 0, 3] == 1 and c[0, 1, 2] == 0 and c[0, 0, 1] == 0
    assert c[1, 0, 3] == 1 and np.isnan(c[1, 0, 2]) and np.isnan(c[1, 2, 3])


def test_ntg_bars_carry_error_bars_only_where_there_is_a_spread(tmp_path, monkeypatch):
    """One (specialist seed, sampling seed) pair has no std: no zero-length cap that reads as an
    exact value; two pairs give the sample std as the error bar."""
    import matplotlib.axes

    seen = []
    real_bar = matplotlib.axes.Axes.bar

    def bar(self, *args, **kwargs):
        seen.append(kwargs.get("yerr"))
        return real_bar(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", bar)
    single = compute_ntg([FIDMeasurement(10.0, 0), FIDMeasurement(9.0, 0, (0, 999))])
    paired = compute_ntg(
        [
            FIDMeasurement(10.0, 0),
            FIDMeasurement(12.0, 1),
            FIDMeasurement(9.0, 0, (0, 999)),
            FIDMeasurement(10.0, 1, (0, 999)),
        ]
    )
    assert _is_png(P.plot_ntg({"one": single, "two": paired}, tmp_path / "ntg.png"))
    assert seen[0] is None
    assert seen[1] is not None and np.allclose(seen[1], [paired.rows[0].std])
    assert paired.rows[0].std == pytest.approx(np.std([-1.0, -2.0], ddof=1))


def test_adam_step_scale_follows_adams_running_rms_of_the_clipped_norm():
    from antdiff.analysis.logs import adam_step_scale

    steps = np.arange(100, 3001, 100)
    # a constant norm: Adam's bias-corrected RMS is that norm, the step is at its steady state
    np.testing.assert_allclose(adam_step_scale(steps, np.full(steps.shape, 0.3), None), 1.0)
    # the norm (clipped: 3.0 -> 1.0) falls tenfold at step 1000: per-step reference of Adam's v
    norms = np.where(steps <= 1000, 3.0, 0.1)
    got = adam_step_scale(steps, norms, clip=1.0)
    v, ref = 0.0, {}
    for t in range(1, 3001):
        g = 1.0 if t <= 1000 else 0.1
        v = 0.999 * v + 0.001 * g * g
        ref[t] = g / np.sqrt(v / (1 - 0.999**t))
    np.testing.assert_allclose(got, [ref[int(s)] for s in steps], rtol=1e-9)
    assert got[9] == pytest.approx(1.0) and got[10] < 0.15  # right after the fall
    assert got[-1] > got[10]  # recovering as the memory of the large norms fades
    # a line without a norm carries the previous one
    holes = norms.astype(float).copy()
    holes[15] = np.nan
    np.testing.assert_allclose(adam_step_scale(steps, holes, clip=1.0), got)


def test_a_runs_adam_step_uses_its_clip_and_beta2(tmp_path):
    from antdiff.analysis.logs import adam_step_scale

    run = write_run(tmp_path / "run", "uw", corrupt_tail=False)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    # the norm falls from 3 (clipped to 1) to 0.1 after the fifth line
    norms = [3.0] * 5 + [0.1] * (len(lines) - 5)
    rows = [json.loads(x) for x in lines]
    for row, g in zip([r for r in rows if "loss" in r], norms):
        row["grad_norm"] = g
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(cfg + "optim:\n  grad_clip: 1.0\n  betas: [0.9, 0.99]\n")
    log = read_training_log(run)
    assert log.grad_clip == 1.0
    np.testing.assert_array_equal(log.clipped_grad_norm()[:6], [1, 1, 1, 1, 1, 0.1])
    got = log.adam_step_scale()
    np.testing.assert_allclose(got, adam_step_scale(log.steps, log.grad_norm, 1.0, 0.99))
    # a 100-step memory forgets the large norms within the run; the default 0.999 would not
    assert got[-1] > 0.9 > adam_step_scale(log.steps, log.grad_norm, 1.0, 0.999)[-1]
    assert _is_png(P.plot_optimizer(log, tmp_path / "f" / "optimizer.png"))


def test_plot_optimizer_needs_gradient_norms(tmp_path):
    run = write_run(tmp_path / "run", "uw", corrupt_tail=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("grad_norm", None)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="grad_norm"):
        P.plot_optimizer(read_training_log(run), tmp_path / "f" / "none.png")


def test_save_figure_writes_a_palette_png_close_to_matplotlibs_own(tmp_path):
    """A plot saved as a 256-colour palette is within a few levels of matplotlib's RGBA
    rendering and clearly smaller; other suffixes are matplotlib's own format."""
    import io

    from PIL import Image

    from antdiff.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    x = np.linspace(0, 10, 400)
    for i in range(8):  # eight colours with anti-aliased edges, text, a legend
        ax.plot(x, np.sin(x + i) * (1 + 0.1 * i), label=f"curve {i}")
    ax.fill_between(x, -0.5, 0.5, alpha=0.2)  # a translucent band: blended colours
    ax.legend(fontsize=7)
    ax.set_title("save_figure")
    reference = io.BytesIO()
    fig.savefig(reference, format="png", dpi=120)
    out = save_figure(fig, tmp_path / "sub" / "plot.png", close=False)
    png = Image.open(out)
    assert png.mode == "P" and len(png.getcolors(256) or []) <= 256
    ref = Image.open(io.BytesIO(reference.getvalue()))
    ref_rgb = Image.new("RGB", ref.size, (255, 255, 255))
    ref_rgb.paste(ref.convert("RGBA"), mask=ref.convert("RGBA").getchannel("A"))
    diff = np.abs(np.asarray(png.convert("RGB"), float) - np.asarray(ref_rgb, float))
    assert png.size == ref.size
    assert diff.mean() < 1.0 and diff.max() <= 16
    assert out.stat().st_size < 0.6 * len(reference.getvalue())
    pdf = save_figure(fig, tmp_path / "plot.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")


def test_plot_bin_losses_refuses_what_it_cannot_compare(tmp_path):
    from antdiff.analysis import read_training_log
    from antdiff.plots import plot_bin_losses

    a = read_training_log(write_run(tmp_path / "a", "uw", bins=4))
    b = read_training_log(write_run(tmp_path / "b", "uw", bins=5))
    none = read_training_log(write_run(tmp_path / "n", "uw", bins=0))
    assert none.bin_loss_profile() is None and a.bin_loss_profile().shape == (4,)
    with pytest.raises(ValueError, match="different numbers of bins"):
        plot_bin_losses({"a": a, "b": b}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no run logged losses per bin"):
        plot_bin_losses({"n": none}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="reference run 'n' has no bin losses"):
        plot_bin_losses({"a": a, "n": none}, tmp_path / "x.png", reference="n")
    with pytest.raises(ValueError, match=r"last must be in \(0, 1\]"):
        a.bin_loss_profile(last=0.0)
    path = plot_bin_losses({"a": a, "n": none}, tmp_path / "ok.png", reference="a")
    assert path.stat().st_size > 2000  # the run without bins is left out, not an error


def _binned_log(root, clusters, *, ant: str, marked: bool, bins: int = 10):
    """A run's log with ``bins`` fixed bins of t, ``"bin_mean": "uniform_t"`` if ``marked``."""
    root.mkdir(parents=True, exist_ok=True)
    if clusters is not None:
        (root / "clusters.json").write_text(clusters.to_json())
    (root / "config.yaml").write_text(ant)
    k = clusters.k if clusters is not None else 5
    rows = [
        {
            "step": 100 * (n + 1), "loss": 0.1, "cluster_losses": [0.1] * k, "counts": [2] * k,
            "bin_losses": [0.5 / (b + 1) for b in range(bins)], "bin_counts": [1] * bins,
            **({"bin_mean": "uniform_t"} if marked else {}),
        }
        for n in range(3)
    ]  # fmt: skip
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return read_training_log(root)


def test_bins_of_an_uneven_draw_of_t_are_left_out_of_comparisons(tmp_path):
    """Stratified sampling over clusters of other widths draws t unevenly inside a bin that two
    clusters share; a log from before the trainer weighted its samples by 1/(T·p(t)) holds that
    bin's sample mean, which leans to the oversampled timesteps: NaN in every comparison."""
    stratified = "ant:\n  enabled: true\n  balancer: uw\n  k: 5\n"
    snr = TaskClusters(((0, 0), (1, 1), (2, 4), (5, 17), (18, 999)))
    old = _binned_log(tmp_path / "snr", snr, ant=stratified, marked=False)
    p = old.timestep_probabilities()
    assert p.shape == (1000,) and p.sum() == pytest.approx(1.0)
    assert p[0] == pytest.approx(0.2) and p[500] == pytest.approx(1 / (5 * 982))
    assert old.uneven_bins().tolist() == [True] + [False] * 9  # only [0, 100) holds t ≤ 17
    profile = old.bin_loss_profile()
    assert np.isnan(profile[0]) and profile[1:] == pytest.approx(
        [0.5 / (b + 1) for b in range(1, 10)]
    )
    assert np.isnan(old.comparable_bin_losses()[:, 0]).all() and not np.isnan(old.bin_losses).any()
    affinity = TaskClusters(((0, 78), (79, 180), (181, 477), (478, 779), (780, 999)))
    old = _binned_log(tmp_path / "aff", affinity, ant=stratified, marked=False)
    assert np.flatnonzero(old.uneven_bins()).tolist() == [0, 1, 4, 7]  # where two clusters meet
    # a log whose lines say they hold means over t ~ U in each bin: every bin counts
    new = _binned_log(tmp_path / "new", snr, ant=stratified, marked=True)
    assert new.bin_mean_uniform_t and not new.uneven_bins().any()
    assert not np.isnan(new.bin_loss_profile()).any()
    # t drawn evenly (vanilla, ANT's uniform sampling, equal clusters): nothing to leave out
    vanilla = _binned_log(
        tmp_path / "van",
        TaskClusters.uniform(1000, 5),
        ant="ant:\n  enabled: false\n",
        marked=False,
    )
    uniform = _binned_log(
        tmp_path / "uni", snr, ant=stratified + "  sampling: uniform\n", marked=False
    )
    equal = _binned_log(
        tmp_path / "eq", TaskClusters.uniform(1000, 5), ant=stratified, marked=False
    )
    for log in (vanilla, uniform, equal):
        assert not log.uneven_bins().any()
    # an ANT run whose clusters are unknown: no bin can be trusted
    unknown = _binned_log(tmp_path / "unk", None, ant=stratified, marked=False)
    assert unknown.timestep_probabilities() is None and unknown.uneven_bins().all()


def test_unweighted_bin_losses_compare_weighted_runs_with_plain_ones(tmp_path):
    """A weighted run's bin_losses are w(t)·loss: only its logged parts per bin (``bin_mse``,
    ``bin_vb``) are its unweighted loss, comparable with a plain run's bin_losses."""

    def log(name, diffusion, extra, clusters=None, marked=True):
        ant = "ant:\n  enabled: false\n" if clusters is None else "ant:\n  enabled: true\n  k: 5\n"
        out = _binned_log(tmp_path / name, clusters, ant=ant + diffusion, marked=marked)
        rows = [json.loads(s) for s in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for r in rows:
            r.update(extra)
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return read_training_log(tmp_path / name) if extra else out

    plain = log("plain", "diffusion:\n  weighting: none\n", {})
    np.testing.assert_array_equal(plain.unweighted_bin_losses(), plain.comparable_bin_losses())
    assert not plain.bins_are_weighted
    p2 = "diffusion:\n  weighting: p2\n"
    old_p2 = log("p2-old", p2, {})
    assert old_p2.unweighted_bin_losses() is None and old_p2.bins_are_weighted  # w(t)·MSE only
    np.testing.assert_allclose(old_p2.bin_loss_profile(), [0.5 / (b + 1) for b in range(10)])
    mse = [0.9 / (b + 1) for b in range(10)]
    p2_log = log("p2", p2, {"bin_mse": mse})
    np.testing.assert_allclose(p2_log.unweighted_bin_losses(), np.tile(mse, (3, 1)))
    # the profile that reports and plots compare is the unweighted one where it was logged
    assert not p2_log.bins_are_weighted
    np.testing.assert_allclose(p2_log.bin_loss_profile(), mse)
    vb = [0.01] * 10
    hybrid = log("p2-hybrid", p2 + "  learned_variance: true\n", {"bin_mse": mse, "bin_vb": vb})
    np.testing.assert_allclose(hybrid.unweighted_bin_losses(), np.tile(np.add(mse, vb), (3, 1)))
    # an unmarked log of an uneven stratified draw: that bin is left out here too
    snr = TaskClusters(((0, 0), (1, 1), (2, 4), (5, 17), (18, 999)))
    old = log("p2-snr", p2, {"bin_mse": mse}, clusters=snr, marked=False).unweighted_bin_losses()
    assert np.isnan(old[:, 0]).all() and not np.isnan(old[:, 1:]).any()
    assert log("none", p2, {}, marked=True).bin_mse.shape == (0, 0)


def test_plot_bin_losses_marks_a_weighted_run_that_logged_only_its_weighted_loss(
    tmp_path, monkeypatch
):
    """Its w(t)·loss is not the others' loss: dashed and labelled so in both panels; a weighted
    run with its unweighted parts per bin is drawn as any other run."""
    from antdiff.analysis import read_training_log
    from antdiff.plots import plot_bin_losses

    runs = {}
    for name, extra in (("vanilla", {}), ("p2_old", None), ("p2_new", {"bin_mse": [0.2] * 4})):
        run = write_run(tmp_path / name, "uw", bins=4)
        diffusion = "" if name == "vanilla" else "diffusion:\n  weighting: p2\n"
        (run / "config.yaml").write_text("ant:\n  enabled: false\n  k: 4\n" + diffusion)
        if extra:
            lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()[:-1]]
            for r in lines:
                if "bin_losses" in r:
                    r.update(extra)
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        runs[name] = read_training_log(run)
    saved = []
    monkeypatch.setattr(P, "_save", lambda fig, path, dpi=120: saved.append(fig) or path)
    plot_bin_losses(runs, tmp_path / "b.png", reference="vanilla")
    (fig,) = saved
    left, right = fig.axes
    for ax, names in ((left, ["vanilla", "p2_old", "p2_new"]), (right, ["p2_old", "p2_new"])):
        lines = {
            ln.get_label(): ln.get_linestyle() for ln in ax.get_lines() if ln.get_label()[0] != "_"
        }
        labels = [n if n != "p2_old" else "p2_old (w(t)·loss)" for n in names]
        assert list(lines) == labels
        assert lines["p2_old (w(t)·loss)"] == "--" and lines["p2_new"] == "-"


def test_plot_bin_losses_takes_each_runs_ratio_to_its_own_reference(tmp_path, monkeypatch):
    """``reference`` as ``{run: reference run}``: each listed run against its own (the vanilla
    run of its loss), the others drawn on the left only; a reference without bins is refused."""
    from antdiff.analysis import read_training_log
    from antdiff.plots import plot_bin_losses

    logs = {n: read_training_log(write_run(tmp_path / n, "uw", bins=4)) for n in "abcd"}
    for n, f in (("b", 2.0), ("d", 4.0)):  # b = 2·a, d = 4·c in every bin
        logs[n].bin_losses = logs[n].bin_losses * f
    saved = []
    monkeypatch.setattr(P, "_save", lambda fig, path, dpi=120: saved.append(fig) or path)
    plot_bin_losses(logs, tmp_path / "x.png", reference={"b": "a", "d": "c", "a": "a"})
    right = saved[0].axes[1]
    drawn = {ln.get_label(): ln.get_ydata() for ln in right.get_lines() if ln.get_label()[0] != "_"}
    assert set(drawn) == {"b / a", "d / c"}
    np.testing.assert_allclose(drawn["b / a"], 2.0)
    np.testing.assert_allclose(drawn["d / c"], 4.0)
    assert right.get_title() == "ratio to a, c"
    none = write_run(tmp_path / "n", "uw", bins=0)
    with pytest.raises(ValueError, match="reference run 'n' has no bin losses"):
        plot_bin_losses({**logs, "n": read_training_log(none)}, tmp_path / "y.png",
                        reference={"b": "n"})  # fmt: skip


def test_plot_bin_losses_takes_the_ratio_at_the_steps_both_runs_logged(tmp_path, monkeypatch):
    """A run trained twice as long as its reference is compared at the reference's steps: the
    same run cut short is its own reference exactly (ratio 1), though its own last 10% of lines
    hold lower losses than the reference's last 10%."""
    import shutil

    from antdiff.analysis import read_training_log
    from antdiff.plots import plot_bin_losses

    long = write_run(tmp_path / "long", "uw", bins=4)
    short = tmp_path / "short"
    shutil.copytree(long, short)
    lines = (short / "metrics.jsonl").read_text().splitlines()
    (short / "metrics.jsonl").write_text("".join(x + "\n" for x in lines[: len(lines) // 2]))
    logs = {"long": read_training_log(long), "short": read_training_log(short)}
    assert logs["short"].steps.size < logs["long"].steps.size
    own_last = logs["long"].bin_loss_profile() / logs["short"].bin_loss_profile()
    assert not np.allclose(own_last[np.isfinite(own_last)], 1.0)  # other stages of training
    saved = []
    monkeypatch.setattr(P, "_save", lambda fig, path, dpi=120: saved.append(fig) or path)
    plot_bin_losses(logs, tmp_path / "x.png", reference="short")
    (line,) = [ln for ln in saved[0].axes[1].get_lines() if ln.get_label() == "long"]
    y = np.asarray(line.get_ydata(), dtype=float)
    np.testing.assert_allclose(y[np.isfinite(y)], 1.0)
