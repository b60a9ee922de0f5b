"""The config schema: defaults, base: includes, overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from antdiff.training.config import (
    Config,
    ConfigError,
    config_reference,
    diff_configs,
    load_config,
    parse_overrides,
)

REPO = Path(__file__).resolve().parents[1]


def write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def test_defaults_and_run_dir_from_file_name(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "exp1.yaml", "optim: {lr: 3.0e-4}\n"))
    assert cfg.optim.lr == 3e-4
    assert cfg.optim.batch_size == Config().optim.batch_size
    assert cfg.run.dir == str(Path("runs") / "exp1")
    assert load_config().run.dir == str(Path("runs") / "default")


def test_base_includes_merge_recursively_and_overrides_win(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write(tmp_path / "base.yaml", "optim: {lr: 1.0e-3, batch_size: 64}\nant: {k: 4}\n")
    write(tmp_path / "sub" / "mid.yaml", "base: ../base.yaml\nant: {enabled: true}\n")
    f = write(tmp_path / "sub" / "leaf.yaml", "base: mid.yaml\noptim: {lr: 5.0e-4}\n")
    cfg = load_config(f, ["optim.batch_size=32", "ant.balancer_params={lr: 0.01}"])
    assert cfg.optim.lr == 5e-4  # leaf beats base
    assert cfg.optim.batch_size == 32  # override beats all
    assert cfg.ant.k == 4 and cfg.ant.enabled  # merged from both bases
    assert cfg.ant.balancer_params == {"lr": 0.01}


def test_yaml11_exponent_strings_are_numbers(tmp_path: Path) -> None:
    # PyYAML reads "2e-4" (no dot) as a string; the schema must still accept it as a float.
    cfg = load_config(write(tmp_path / "c.yaml", "optim: {lr: 2e-4}\ntrain: {steps: 1e3}\n"))
    assert cfg.optim.lr == pytest.approx(2e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.train.steps == 1000 and isinstance(cfg.train.steps, int)


@pytest.mark.parametrize(
    ("text", "overrides", "key", "fragment"),
    [
        ("optim: {lrr: 1.0}\n", [], "optim.lrr", "did you mean 'optim.lr'"),
        ("", ["optimm.lr=1"], "optimm", "unknown key"),
        ("", ["optim.lr=fast"], "optim.lr", "expected a number"),
        ("", ["optim.lr=-1"], "optim.lr", "must be > 0"),
        ("", ["train.steps=1.5"], "train.steps", "expected an integer"),
        ("", ["ant.enabled=yes please"], "ant.enabled", "true or false"),
        ("", ["ant.sampling=random"], "ant.sampling", "must be one of"),
        ("", ["train.precision=fp8"], "train.precision", "must be one of"),
        ("", ["ema.decay=1.0"], "ema.decay", "[0, 1)"),
        ("", ["diffusion.timestep_range=[10, 5]"], "diffusion.timestep_range", "first <= last"),
        ("", ["ant.cost=affinity"], "ant.affinity", "affinity matrix"),
        ("", ["optim.betas=[0.9]"], "optim.betas", "two numbers"),
        ("data: {spec: '???'}\n", [], "data.spec", "must be set"),
        ("", ["sample.guidance=2"], "sample.guidance", "class_conditional"),
        ("", ["train.eval_every=100"], "train.eval_ref", "reference statistics"),
    ],
)
def test_errors_name_the_key(
    tmp_path: Path, text: str, overrides: list[str], key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path / "c.yaml", text), overrides)
    assert e.value.key == key
    assert f"'{key}'" in str(e.value) and fragment in str(e.value)


def test_bad_override_syntax_and_circular_base(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["optim.lr"])
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_round_trip_through_saved_yaml(tmp_path: Path) -> None:
    cfg = load_config(None, ["ant.enabled=true", "ant.clusters=[[0, 499], [500, 999]]"])
    cfg.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert diff_configs(cfg.to_dict(), again.to_dict()) == []
    changed = load_config(tmp_path / "config.yaml", ["optim.lr=0.5", "ant.balancer_params={a: 1}"])
    keys = {k for k, _, _ in diff_configs(cfg.to_dict(), changed.to_dict())}
    assert keys == {"optim.lr", "ant.balancer_params.a"}


def test_reference_covers_every_key_with_docs() -> None:
    rows = config_reference()
    keys = {r[0] for r in rows}
    flat = {f"{s}.{k}" for s, sec in Config().to_dict().items() for k in sec}
    assert keys == flat
    assert all(r[3] for r in rows), [r[0] for r in rows if not r[3]]
    # docs/training.md documents every key of the schema
    doc = (REPO / "docs" / "training.md").read_text()
    missing = [k for k in keys if f"`{k}`" not in doc]
    assert not missing, f"docs/training.md lacks {missing}"


def test_every_preset_loads_or_names_its_placeholders() -> None:
    presets = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(presets) >= 20
    for p in presets:
        raw = yaml.safe_load(p.read_text()) or {}
        if raw.get("abstract"):
            continue
        try:
            load_config(p)
        except ConfigError as e:
            # presets for data the user must supply leave '???' placeholders
            assert "must be set" in str(e), f"{p}: {e}"


def test_shipped_presets_resolve_by_name_from_any_directory(tmp_path, monkeypatch) -> None:
    from antdiff.training.config import PRESET_DIR, list_presets, resolve_config_file

    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the names must come from the package
    names = list_presets()
    assert {
        "demo",
        "cifar10/vanilla",
        "cifar10/ant_timestep_uw",
        "imagenet256/dit_s2_ant_uw",
    } <= set(names)
    assert not any(n.rsplit("/", 1)[-1].startswith("_") for n in names)  # bases are not presets
    for spec in ("cifar10/p2", "cifar10/p2.yaml", "configs/cifar10/p2.yaml"):
        assert resolve_config_file(spec) == PRESET_DIR / "cifar10" / "p2.yaml"
    cfg = load_config("cifar10/ant_timestep_uw", ["data.spec=x"])  # its base: file resolves too
    assert cfg.ant.enabled and cfg.ant.balancer == "uw" and cfg.model.preset == "unet-ddpm-cifar10"
    assert cfg.run.dir == "runs/ant_timestep_uw"
    (tmp_path / "cifar10").mkdir()
    own = tmp_path / "cifar10" / "p2.yaml"
    own.write_text("optim: {lr: 1.0e-3}\n")
    assert resolve_config_file("cifar10/p2.yaml") == Path("cifar10/p2.yaml")  # a file wins
    with pytest.raises(FileNotFoundError, match="no shipped preset.*cifar10/vanilla"):
        resolve_config_file("cifar10/vanila")
    with pytest.raises(FileNotFoundError, match="no shipped preset"):
        resolve_config_file("cifar10/_base")


def test_the_wheel_ships_every_preset(tmp_path) -> None:
    """`pip install antdiff` users get the presets: build the wheel from a copy of the sources."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from antdiff.training.config import PRESET_DIR

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(root / f, src / f)
    shutil.copytree(
        root / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("antdiff-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("antdiff/configs/")}
    want = {
        f"antdiff/configs/{p.relative_to(PRESET_DIR).as_posix()}"
        for p in PRESET_DIR.rglob("*.yaml")
    }
    assert len(want) >= 30 and shipped == want
