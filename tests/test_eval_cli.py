"""``antdiff stats`` / ``antdiff eval`` end to end on tiny data with a tiny TorchScript extractor.

The stand-in network tests the plumbing (files, flags, JSON, errors); the real Inception is
covered by the opt-in slow test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from antdiff.cli import main
from antdiff.evaluation import Evaluator, InceptionFeatures, ReferenceStats

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")


class TinyFeatureNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, kernel_size=23, stride=23)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x)).mean(dim=(2, 3))


def _tiny_net(path, seed):
    torch.manual_seed(seed)
    torch.jit.save(torch.jit.script(TinyFeatureNet().eval()), str(path))
    return str(path)


def _images(rng, n, low, high):
    return rng.integers(low, high, size=(n, 8, 8, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval_cli")
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", images=_images(rng, 120, 0, 160))
    np.savez(d / "good.npz", samples=_images(rng, 60, 0, 160))
    np.savez(d / "bad.npz", _images(rng, 60, 100, 256))  # stored as arr_0
    np.savez(d / "nokey.npz", pictures=_images(rng, 10, 0, 256))
    return {
        "dir": d,
        "data": str(d / "data.npz"),
        "good": str(d / "good.npz"),
        "bad": str(d / "bad.npz"),
        "nokey": str(d / "nokey.npz"),
        "net": _tiny_net(d / "net.pt", 0),
        "other_net": _tiny_net(d / "other.pt", 1),
        "ref": str(d / "ref.npz"),
    }


def _run_json(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _eval_args(files, samples, ref, *extra):
    return [
        "eval", "--samples", samples, "--ref", ref, "--inception", files["net"],
        "--device", "cpu", "--kid-subsets", "10", "--kid-subset-size", "50", *extra,
    ]  # fmt: skip


def test_stats_then_eval_end_to_end(files, capsys):
    argv = ["stats", files["data"], "--out", files["ref"], "--inception", files["net"]]
    assert main([*argv, "--device", "cpu", "--max-features", "100"]) == 0
    out = capsys.readouterr().out
    assert "n=120" in out and "100 stored" in out
    ref = ReferenceStats.load(files["ref"])
    net = InceptionFeatures.from_path(files["net"], device="cpu")
    assert ref.n == 120 and ref.features.shape == (100, 6) and ref.checksum == net.checksum
    assert ref.dataset == files["data"]
    # computed statistics are never silently replaced: a second call stops before any work
    assert main([*argv, "--device", "cpu", "--n", "10"]) == 2
    assert "already holds reference statistics" in capsys.readouterr().err
    assert ReferenceStats.load(files["ref"]).n == 120

    good = _run_json(capsys, [*_eval_args(files, files["good"], files["ref"]), "--json"])
    bad = _run_json(capsys, [*_eval_args(files, files["bad"], files["ref"]), "--json"])
    assert (good["n_gen"], good["n_real"], good["n_real_features"]) == (60, 120, 100)
    assert good["floor"] is not None and good["floor_n_ref"] == 60
    assert good["extractor"]["checksum"] == net.checksum
    assert good["reference"]["path"] == files["ref"]
    assert good["fid"] < bad["fid"] and good["kid"] < bad["kid"]
    assert good["precision"] > bad["precision"] and good["pr_n"] == 60

    # --n takes the first n samples; the floor follows n.
    part = _run_json(
        capsys, [*_eval_args(files, files["good"], files["ref"], "--n", "30"), "--json"]
    )
    assert part["n_gen"] == 30 and part["floor_n_ref"] == 90 and "kid" in part

    # Human-readable table names n, the floor and the extractor.
    assert main(_eval_args(files, files["good"], files["ref"], "--metrics", "fid")) == 0
    table = capsys.readouterr().out
    assert "real-vs-real floor at n=60" in table and "generated 60, real 120" in table
    assert "KID" not in table


def test_eval_against_a_data_set_spec_matches_cached_statistics(files, capsys):
    if not (files["dir"] / "ref.npz").exists():
        main(
            [
                "stats",
                files["data"],
                "--out",
                files["ref"],
                "--inception",
                files["net"],
                "--device",
                "cpu",
            ]
        )
    cached = _run_json(
        capsys, [*_eval_args(files, files["good"], files["ref"], "--metrics", "fid"), "--json"]
    )
    direct = _run_json(
        capsys, [*_eval_args(files, files["good"], files["data"], "--metrics", "fid"), "--json"]
    )
    assert direct["fid"] == pytest.approx(cached["fid"], rel=1e-6)
    assert direct["n_real"] == 120 and direct["reference"]["dataset"] == files["data"]


def test_user_errors_are_one_line(files, capsys, tmp_path):
    main(
        [
            "stats",
            files["data"],
            "--out",
            files["ref"],
            "--inception",
            files["net"],
            "--device",
            "cpu",
            "--force",  # whatever an earlier test left there
        ]
    )
    capsys.readouterr()
    cases = [
        # statistics made by another network
        (["eval", "--samples", files["good"], "--ref", files["ref"], "--inception", files["other_net"],
          "--device", "cpu"], "not comparable"),
        (_eval_args(files, files["nokey"], files["ref"]), "no array 'samples' or 'arr_0'"),
        (_eval_args(files, files["good"], files["ref"], "--n", "500"), "--n 500"),
        (_eval_args(files, files["good"], files["ref"], "--metrics", "fid,is"), "unknown metric"),
        (["eval", "--samples", files["good"], "--ref", files["ref"], "--inception", files["good"],
          "--device", "cpu"], "expected the TorchScript default_1.pt"),
        (["stats", files["data"], "--inception", files["net"]], "--out REF.npz is required"),
        (["stats", files["ref"], "--out", str(tmp_path / "x.npz"), "--inception", files["net"]],
         "already holds reference statistics"),
        (["stats"], "give a DATASET"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err


def test_export_fp16_copy_from_the_cli(files, capsys, tmp_path):
    out = tmp_path / "net16.pt"
    assert main(["stats", "--export-inception-fp16", str(out), "--inception", files["net"]]) == 0
    assert "checksum" in capsys.readouterr().out
    fp16 = InceptionFeatures.from_path(out, device="cpu")
    assert fp16.format == "torchscript-fp16"
    assert next(iter(torch.jit.load(str(out)).state_dict().values())).dtype == torch.float16


def test_evaluator_hook(files):
    main(
        [
            "stats",
            files["data"],
            "--out",
            files["ref"],
            "--inception",
            files["net"],
            "--device",
            "cpu",
        ]
    )
    ev = Evaluator(files["ref"], 40, ["fid", "kid"], "cpu", 16, inception=files["net"])
    images = np.load(files["good"])["samples"]
    first = ev(images)
    assert first["n"] == 40 and {"fid", "floor", "kid"} <= set(first) and "precision" not in first
    assert ev(images)["fid"] == first["fid"]  # deterministic, floor cached
    with pytest.raises(ValueError, match="only 20 were given"):
        ev(images[:20])
    with pytest.raises(ValueError, match="not comparable"):
        Evaluator(files["ref"], 40, "fid", "cpu", inception=files["other_net"])


def test_samples_from_an_image_folder_and_a_npy(files, tmp_path):
    from PIL import Image

    from antdiff.evaluation import load_samples

    images = np.load(files["good"])["samples"][:5]
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
    loaded = load_samples(tmp_path)
    assert loaded.shape == (5, 8, 8, 3) and loaded.dtype == np.uint8
    assert sorted(x.tobytes() for x in loaded) == sorted(x.tobytes() for x in images)
    np.save(tmp_path / "s.npy", images)
    from_npy = load_samples(tmp_path / "s.npy")
    assert sorted(x.tobytes() for x in from_npy) == sorted(x.tobytes() for x in images)
    np.save(tmp_path / "f.npy", images.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        load_samples(tmp_path / "f.npy")
