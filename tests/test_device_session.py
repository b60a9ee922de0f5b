"""benchmarks/device_session.sh, the GPU session script of the reproduction study, dry-run on the
CPU (SMOKE=1: digits, tiny UNet, a stand-in FID network) so that a device call is never spent on
a broken script: it trains, evaluates, computes the affinity once the runs are done, and bundles
everything into one archive in $OUT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_session.sh"


def _smoke_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a CPU dry run whose folders live under ``tmp_path``."""
    return {
        **os.environ,
        "SMOKE": "1",
        "DEV_DIR": str(tmp_path / "dev"),
        "OUT": str(tmp_path / "out"),
        "OMP_NUM_THREADS": "1",
        "PYTHON": sys.executable,
    }


#: A two-step run evaluated once on 12 samples: the smallest slice that exercises everything.
TWO_STEPS = {"STEPS": "2", "EVAL_EVERY": "2", "EVAL_N": "12", "BUDGET": "300"}


def _session(env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """One call of the script from the repository root, output captured."""
    return subprocess.run(
        ["bash", str(SCRIPT)], cwd=SCRIPT.parents[1], env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_device_session_dry_run_trains_evaluates_and_bundles(tmp_path: Path) -> None:
    env = {
        **_smoke_env(tmp_path),
        "RUN_GROUPS": "vanilla-eps-s0",
        **TWO_STEPS,
        "SETS": "train.log_every=1",
        "AFFINITY_BINS": "10",
        "AFFINITY_DRAWS": "0 1",  # a second measurement draw of the same checkpoint
        "AFFINITY_CARDS": "0 3",  # each matrix's card, named (a dry run maps every card to cpu)
    }
    proc = _session(env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "draw 0 (EMA weights, 10 bins, 20 images, card 0)" in proc.stdout
    assert "draw 1 (EMA weights, 10 bins, 20 images, card 3)" in proc.stdout
    assert "slice finished" in proc.stdout
    (bundle,) = (tmp_path / "out").glob("session_*.tar.gz")
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
        result = json.load(tar.extractfile("results/phase1-vanilla-eps-s0.json"))  # type: ignore[arg-type]
        env_json = json.load(tar.extractfile("results/environment.json"))  # type: ignore[arg-type]
        draws = [
            json.load(tar.extractfile(f"results/affinity-vanilla-eps-s0{d}/affinity.json"))  # type: ignore[arg-type]
            for d in ("", "-draw1")
        ]
    assert env_json["cards"] == ["cpu"] and len(env_json["source_digest"]) == 64
    assert {
        "results/summary.md",
        "results/runs/vanilla-eps-s0/metrics.jsonl",
        "results/runs/vanilla-eps-s0/clusters.json",
        "results/affinity-vanilla-eps-s0/affinity.npy",
        "results/affinity-vanilla-eps-s0-draw1/affinity.npy",
        "results/affinity_vanilla-eps-s0-draw1.log",
    } <= names
    assert [d["seed"] for d in draws] == [0, 1]  # same checkpoint, another draw
    assert all(d["split_half"]["images"] == [10, 10] for d in draws)  # on by default
    assert "results/affinity-vanilla-eps-s0/affinity_halves.npy" in names
    assert draws[0]["checkpoints"] == draws[1]["checkpoints"]
    assert result["iterations"] == 2 and [p["step"] for p in result["curve"]] == [2]
    assert any(n.startswith("results/runs/vanilla-eps-s0/") and n.endswith(".png") for n in names)
    assert result["config"]["train"]["log_every"] == 1  # SETS reached the run's config
    # A second call finds the run finished and the affinity done: it only bundles again.
    again = _session(env)
    assert again.returncode == 0 and "slice finished" in again.stdout
    assert (
        "O1: affinity" not in again.stdout
        and "vanilla-eps-s0: done" in (tmp_path / "dev" / "logs" / "repro_cpu.log").read_text()
    )


def test_detached_work_outlives_the_call_and_stops_at_the_deadline(tmp_path: Path) -> None:
    """DETACH=1: the first call starts the trainers in their own process session and returns at
    its budget with a snapshot; the work goes on without a call, and a later call finds it
    (starting nothing new) and bundles once it is done. The O1 affinity is computed at the end
    although the time-limited run never reached its STEPS."""
    env = {
        **_smoke_env(tmp_path),
        "DETACH": "1",
        "TRAIN_SECONDS": "75",  # the deadline, from the first call's start
        "AFFINITY_RUNS": "vanilla-eps-s0",
        "AFFINITY_BINS": "10",
        "RUN_GROUPS": "vanilla-eps-s0",
        "STEPS": "100000",  # never reached: the deadline stops the run
        "EVAL_EVERY": "3",
        "EVAL_N": "12",
        "BUDGET": "50",  # the first call bundles 5 s after the work began
        "SETS": "train.log_every=1",
    }
    dev = tmp_path / "dev"

    def call(budget: str) -> subprocess.CompletedProcess[str]:
        return _session({**env, "BUDGET": budget})

    first = call("50")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "detached work started" in first.stdout
    assert "budget reached: bundling while the work is still running" in first.stdout
    # each call's reply shows the deadline's projection of every run while the work goes on
    # (5 s in, the trainer may not have logged yet: the table or a line saying so)
    assert "projection against the deadline" in first.stdout
    assert "| vanilla-eps-s0 | cpu |" in first.stdout or "has a training log yet" in first.stdout
    worker = int((dev / "work.pid").read_text())
    os.kill(worker, 0)  # the worker is alive after the call that started it returned
    assert len(list((tmp_path / "out").glob("session_*.tar.gz"))) == 1

    second = call("400")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "detached work started" not in second.stdout  # found the running worker
    assert "detached work done" in second.stdout and "slice finished" not in second.stdout
    bundles = sorted((tmp_path / "out").glob("session_*.tar.gz"), key=os.path.getmtime)
    with tarfile.open(bundles[-1]) as tar:
        names = set(tar.getnames())
        result = json.load(tar.extractfile("results/phase1-vanilla-eps-s0.json"))  # type: ignore[arg-type]
    assert "results/affinity-vanilla-eps-s0/affinity.npy" in names
    assert "results/work.log" in names
    # stopped by the deadline, with a checkpoint, after at least one evaluation (or just before
    # it: the deadline is final, so a trainer whose next evaluation cannot end in time stops)
    assert 3 <= result["iterations"] < 100000 and result["curve"][0]["step"] == 3
    log = (dev / "logs" / "repro_cpu.log").read_text()
    assert "time limit reached" in log or "vanilla-eps-s0: its next evaluation (step" in log


def test_a_run_stopped_before_its_first_evaluation_gets_no_o1_matrix(tmp_path: Path) -> None:
    """Slice 8: a run stopped after a few steps (there by a wrong projection; here because its
    first evaluation lies beyond the deadline) is not the model its O1 was planned for: the
    matrix is skipped, saying why, and the card is not spent on it."""
    env = {
        **_smoke_env(tmp_path),
        "DETACH": "1",
        "TRAIN_SECONDS": "60",
        "AFFINITY_RUNS": "vanilla-eps-s0",
        "AFFINITY_BINS": "10",
        "RUN_GROUPS": "vanilla-eps-s0",
        "STEPS": "100000",
        "EVAL_EVERY": "50000",  # projected far past the deadline: stopped at once
        "EVAL_N": "12",
        "BUDGET": "300",
        "SETS": "train.log_every=1",
    }
    proc = _session(env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "detached work done" in proc.stdout
    work = (tmp_path / "dev" / "logs" / "work.log").read_text()
    assert "O1: vanilla-eps-s0 stopped at step" in work and "no matrix of it" in work
    assert "O1: affinity of" not in work
    assert not (tmp_path / "dev" / "results" / "affinity-vanilla-eps-s0").exists()


def test_two_slices_share_a_session_in_their_own_folders(tmp_path: Path) -> None:
    """Two instances in one call (Phase 1 and Phase 2 on disjoint cards): each keeps its own
    runs, results and bundle, named by its BUNDLE_TAG in the shared $OUT."""
    base = {**_smoke_env(tmp_path), **TWO_STEPS, "AFFINITY_RUNS": ""}
    a = {**base, "DEV_DIR": str(tmp_path / "a"), "BUNDLE_TAG": "phase1",
         "RUN_GROUPS": "vanilla-hybrid-s0"}  # fmt: skip
    b = {**base, "DEV_DIR": str(tmp_path / "b"), "BUNDLE_TAG": "phase2", "SLICE": "phase2",
         "LOSS": "eps", "RUN_GROUPS": "minsnr-eps-s1"}  # fmt: skip
    procs = [
        subprocess.Popen(
            ["bash", str(SCRIPT)],
            cwd=SCRIPT.parents[1],
            env=e,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for e in (a, b)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    bundles = {p.name.split("-")[0]: p for p in (tmp_path / "out").glob("session_*.tar.gz")}
    assert set(bundles) == {"session_phase1", "session_phase2"}
    with tarfile.open(bundles["session_phase1"]) as tar:
        assert "results/phase1-vanilla-hybrid-s0.json" in tar.getnames()
        assert not any("minsnr" in n for n in tar.getnames())
    with tarfile.open(bundles["session_phase2"]) as tar:
        assert "results/phase2-minsnr-eps-s1.json" in tar.getnames()
        assert not any("vanilla-hybrid" in n for n in tar.getnames())


def test_o2_trains_the_specialists_beside_the_joint_and_measures_the_ntg(tmp_path: Path) -> None:
    """NTG_JOINTS: the five equal-interval specialists train beside the joint run (from its
    config, same STEPS), and once all are done `antdiff ntg` measures the joint's and every
    hybrid's FID and writes the NTG table into the bundle."""
    env = {
        **_smoke_env(tmp_path),
        "RUN_GROUPS": "vanilla-eps-s0",
        **TWO_STEPS,
        "BUDGET": "500",
        "AFFINITY_RUNS": "",
        "NTG_JOINTS": "vanilla-eps-s0",
        "NTG_DEVICES": "0",
        "NTG_PER_DEVICE": "2",
        "NTG_SEEDS": "0",
    }
    proc = _session(env, timeout=900)
    dev = tmp_path / "dev"
    logs = "".join(f.read_text() for f in (dev / "logs").glob("ntg*.log"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs[-3000:]
    assert "slice finished" in proc.stdout, proc.stdout[-3000:] + logs[-3000:]
    specialists = sorted(p.name for p in (dev / "ntg" / "specialists").iterdir() if p.is_dir())
    assert len(specialists) == 5 and all(s.endswith("_seed0") for s in specialists)
    (bundle,) = (tmp_path / "out").glob("session_*.tar.gz")
    with tarfile.open(bundle) as tar:
        ntg = json.load(tar.extractfile("results/ntg-vanilla-eps-s0/ntg.json"))  # type: ignore[arg-type]
    text = json.dumps(ntg)
    assert "199" in text and "800" in text  # the five intervals [0,199] ... [800,999]
    # the bundle is what gets committed; the driver's table reads its O2 results from there
    with tarfile.open(bundle) as tar:
        tar.extractall(tmp_path / "bundle", filter="data")
    table = tmp_path / "table"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT.parent / "repro_cifar.py"), "table", "--from",
         str(tmp_path / "bundle" / "results"), "--results", str(table)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    o2 = json.loads((table / "table.json").read_text())["ntg"]["vanilla-eps"]
    assert o2["seeds"] == [0] and o2["ntg"] == [[r["ntg_mean"]] for r in ntg["rows"]]
    assert o2["joint_iterations"] == [2]
    assert "| vanilla-eps | 1 |" in (table / "table.md").read_text().split("### O2")[1]
    # AFFINITY_RUNS set and empty: no O1 matrix (the run is in the default list)
    assert (
        "O1: affinity" not in proc.stdout
        and not (dev / "results" / "affinity-vanilla-eps-s0").exists()
    )


def test_phase2_affinity_cell_clusters_with_the_fixed_matrix(tmp_path: Path) -> None:
    """SLICE=phase2: the run names come from the Phase-2 grid of LOSS, and an affinity cell
    clusters with AFFINITY_MATRIX (protocol change 5's committed matrix, carried with the tree):
    its clusters are the committed ones and its result file is named for the slice."""
    root = SCRIPT.parents[1] / "benchmarks" / "results" / "repro" / "phase2_affinity"
    env = {
        **_smoke_env(tmp_path),
        "SLICE": "phase2",
        "LOSS": "eps",
        "AFFINITY_MATRIX": str(root / "affinity-vanilla-eps-mean.npy"),
        "RUN_GROUPS": "affinity-uw-eps-s0",
        **TWO_STEPS,
        "AFFINITY_RUNS": "",
    }
    proc = _session(env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "slice finished" in proc.stdout
    (bundle,) = (tmp_path / "out").glob("session_*.tar.gz")
    with tarfile.open(bundle) as tar:
        result = json.load(tar.extractfile("results/phase2-affinity-uw-eps-s0.json"))  # type: ignore[arg-type]
        clusters = json.load(tar.extractfile("results/runs/affinity-uw-eps-s0/clusters.json"))  # type: ignore[arg-type]
    committed = json.loads((root / "clusters-affinity-eps.json").read_text())
    assert clusters["intervals"] == committed["intervals"] == [
        [0, 78], [79, 180], [181, 477], [478, 779], [780, 999]
    ]  # fmt: skip
    assert result["slice"] == "phase2" and result["config"]["ant"]["cost"] == "affinity"


def test_a_slice_that_cannot_run_as_asked_stops_before_any_training(tmp_path: Path) -> None:
    """Unknown run names, a Phase-2 slice without its loss, an affinity cell without its matrix:
    each is refused at once with the fix named, before a device second is spent."""
    matrix = tmp_path / "none.npy"
    cases = [
        (
            {"RUN_GROUPS": "vanilla-eps-s0,vanila-eps-s1"},
            "run vanila-eps-s1 is not in slice phase1",
        ),
        ({"SLICE": "phase2", "RUN_GROUPS": "snr-uw-eps-s0"}, "needs LOSS=eps or LOSS=hybrid"),
        (
            {"SLICE": "phase2", "LOSS": "eps", "RUN_GROUPS": "snr-uw-hybrid-s0"},
            "run snr-uw-hybrid-s0 is not in slice phase2 (loss eps)",
        ),
        (
            {"SLICE": "phase2", "LOSS": "eps", "RUN_GROUPS": "snr-uw-eps-s0 affinity-uw-eps-s0"},
            "set AFFINITY_MATRIX",
        ),
        ({"SLICE": "phase2", "LOSS": "eps", "AFFINITY_MATRIX": str(matrix)}, "is not a file"),
        ({"SLICE": "phase3"}, "SLICE=phase3: phase1 or phase2"),
    ]
    for settings, message in cases:
        env = {**_smoke_env(tmp_path), "BUDGET": "60", **settings}
        proc = _session(env, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, (settings, proc.stderr[-2000:])
        assert not (tmp_path / "dev" / "repro").exists()  # nothing trained


def test_a_carry_split_over_two_calls_is_staged_and_kept_for_the_next(tmp_path: Path) -> None:
    """STAGE_ONLY=1 (prepare_carry.sh SPLIT=1): a first call only unpacks what it carried into
    DEV_DIR; the next call, carrying the rest, finds the first call's files still there."""
    import lzma
    import shutil

    payload = os.urandom(4096)  # stands in for the fp16 Inception
    part1, part2 = tmp_path / "part1", tmp_path / "part2"
    part1.mkdir(), part2.mkdir()
    (part1 / "inception_fp16.pt.xz").write_bytes(lzma.compress(payload))
    site = tmp_path / "site"
    (site / "staged_pkg").mkdir(parents=True)
    (site / "staged_pkg" / "__init__.py").write_text("VALUE = 7\n")
    shutil.make_archive(str(tmp_path / "site"), "xztar", site)
    shutil.move(tmp_path / "site.tar.xz", part1 / "site.tar.xz")
    (part2 / "cifar10-train-jpeg.tar.xz").write_bytes(b"data")
    env = {**_smoke_env(tmp_path), "STAGE_ONLY": "1", "RUN_GROUPS": "vanilla-eps-s0"}
    del env["SMOKE"]  # the device path: carried files, not the CPU stand-ins
    first = _session({**env, "CARRY_DIR": str(part1)}, timeout=120)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    dev = tmp_path / "dev"
    assert "staged in" in first.stdout and "inception_fp16.pt site.tar.xz" in first.stdout
    assert (dev / "inception_fp16.pt").read_bytes() == payload
    assert (dev / "site" / "staged_pkg" / "__init__.py").read_text() == "VALUE = 7\n"
    assert not (dev / "repro").exists() and not list((tmp_path / "out").glob("*.tar.gz"))
    second = _session({**env, "CARRY_DIR": str(part2)}, timeout=120)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "inception_fp16.pt cifar10-train-jpeg.tar.xz site.tar.xz" in second.stdout
    assert (dev / "inception_fp16.pt").read_bytes() == payload  # the first call's files kept


def test_an_inception_in_pieces_is_joined_once_every_piece_is_staged(tmp_path: Path) -> None:
    """SPLIT=2 (prepare_carry.sh): the xz stream of the Inception comes in two pieces over two
    staging calls; the first call keeps its piece and says which is missing, a run refuses to
    start without the whole, and the second call joins them into the original bytes."""
    import lzma

    payload = os.urandom(8192)  # stands in for the fp16 Inception
    stream = lzma.compress(payload)
    half = len(stream) // 2
    part1a, part1b, part2 = tmp_path / "part1a", tmp_path / "part1b", tmp_path / "part2"
    for part in (part1a, part1b, part2):
        part.mkdir()
    (part1a / "inception_fp16.pt.xz.piece1of2").write_bytes(stream[:half])
    (part1b / "inception_fp16.pt.xz.piece2of2").write_bytes(stream[half:])
    (part2 / "cifar10-train-jpeg.tar.xz").write_bytes(b"data")
    env = {**_smoke_env(tmp_path), "STAGE_ONLY": "1", "RUN_GROUPS": "vanilla-eps-s0"}
    del env["SMOKE"]  # the device path: carried files, not the CPU stand-ins
    dev = tmp_path / "dev"

    first = _session({**env, "CARRY_DIR": str(part1a)}, timeout=120)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "the Inception still lacks piece(s) 2 of 2" in first.stdout
    assert not (dev / "inception_fp16.pt").exists()
    assert (dev / "inception_fp16.pt.xz.piece1of2").read_bytes() == stream[:half]

    no_stage = {k: v for k, v in env.items() if k != "STAGE_ONLY"}
    early = _session({**no_stage, "CARRY_DIR": str(part2)}, timeout=120)
    assert early.returncode == 1
    assert "the Inception lacks piece(s) 2 of 2: stage it with STAGE_ONLY=1" in early.stderr
    assert not (dev / "repro").exists()  # nothing trained

    second = _session({**env, "CARRY_DIR": str(part1b)}, timeout=120)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "the Inception still lacks" not in second.stdout
    assert (dev / "inception_fp16.pt").read_bytes() == payload
    assert not list(dev.glob("inception_fp16.pt.xz.piece*"))  # joined, pieces removed


def test_pieces_that_do_not_make_the_stream_are_refused_and_left_out(tmp_path: Path) -> None:
    """Two pieces staged in the wrong files (swapped halves) fail xz's own check: the call says
    so and leaves no partial Inception behind for a later run to load."""
    import lzma

    stream = lzma.compress(os.urandom(8192))
    half = len(stream) // 2
    carry = tmp_path / "carry"
    carry.mkdir()
    (carry / "inception_fp16.pt.xz.piece1of2").write_bytes(stream[half:])
    (carry / "inception_fp16.pt.xz.piece2of2").write_bytes(stream[:half])
    env = {**_smoke_env(tmp_path), "STAGE_ONLY": "1", "RUN_GROUPS": "vanilla-eps-s0"}
    del env["SMOKE"]
    proc = _session({**env, "CARRY_DIR": str(carry)}, timeout=120)
    assert proc.returncode == 1
    assert "pieces" in proc.stderr and "do not decompress" in proc.stderr
    dev = tmp_path / "dev"
    assert not (dev / "inception_fp16.pt").exists()
    assert not (dev / "inception_fp16.pt.part").exists()
