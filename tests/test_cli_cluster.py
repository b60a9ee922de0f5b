import json
import subprocess
import sys

import numpy as np
import pytest

from antdiff.cli import main


def test_table_and_json(capsys):
    assert main(["cluster", "--k", "5", "--cost", "logsnr"]) == 0
    out = capsys.readouterr().out
    assert "log-SNR range" in out and "[0, 152]" in out
    assert main(["cluster", "--k", "5", "--cost", "timestep", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)  # exactly one JSON object
    assert obj["intervals"] == [[0, 199], [200, 399], [400, 599], [600, 799], [800, 999]]
    assert obj["cost"] == 50000.0


def test_plot_and_out(tmp_path, capsys):
    png, js = tmp_path / "c.png", tmp_path / "c.json"
    assert (
        main(["cluster", "--schedule", "squaredcos_cap_v2", "--plot", str(png), "--out", str(js)])
        == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert json.loads(js.read_text())["k"] == 5


def test_affinity_file(tmp_path, capsys):
    A = np.exp(-np.abs(np.subtract.outer(np.arange(100), np.arange(100))) / 10.0)
    np.save(tmp_path / "A.npy", A)
    args = [
        "cluster",
        "-T",
        "100",
        "--k",
        "4",
        "--cost",
        "affinity",
        "--affinity",
        str(tmp_path / "A.npy"),
    ]
    assert main([*args, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["intervals"]) == 4


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--schedule", "nope"], "unknown noise schedule"),
        (["--k", "0"], "positive"),
        (["--k", "2000"], "k > T"),
        (["--cost", "affinity", "--affinity", "/no/such.npy"], "does not exist"),
        (["--cost", "affinity"], "needs --affinity"),
    ],
)
def test_bad_input_is_one_line_nonzero(args, msg, capsys):
    assert main(["cluster", *args]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_wrong_shape_and_corrupt_affinity_from_a_real_process(tmp_path):
    np.save(tmp_path / "bad.npy", np.ones((3, 4)))
    (tmp_path / "junk.npy").write_bytes(b"not a numpy file")
    for f, msg in [("bad.npy", "square"), ("junk.npy", "cannot read")]:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "antdiff.cli",
                "cluster",
                "--cost",
                "affinity",
                "--affinity",
                str(tmp_path / f),
            ],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_a_reader_that_goes_away_stops_the_command_quietly(tmp_path):
    """`antdiff cluster ... | head`: the pipe closes before the table is written; the command
    stops with the shell's SIGPIPE status instead of a BrokenPipeError traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "antdiff.cli", "cluster", "-T", "1000", "-k", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    proc.stdout.close()  # before the command (still importing) writes anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err
