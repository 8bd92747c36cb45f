"""acik as `pip install .` puts it: the wheel holds every file the package reads at run time (the C kernels'
sources, the web page, the recipes), and, installed into a folder of its own and run from outside the checkout,
it trains a step and multiplies int8 weights with its own C kernels. Where a kernel cannot be built, one warning
and PyTorch's operators, never a crash."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from acik.kernels import build, cpu_matmul, cpu_training
from acik.quant.linear import Int8Linear

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the folder it is installed in), built offline with the setuptools of this environment."""
    tmp = tmp_path_factory.mktemp("install")
    tree = tmp / "tree"  # a copy: the build writes build/ and *.egg-info, which must not land in the checkout
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(tree)])
    (wheel,) = (tmp / "dist").glob("acik-*.whl")
    site = tmp / "site"
    run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)])
    return wheel, site


def test_the_wheel_holds_every_file_the_package_reads(installed):
    """Every file under src/acik that is not Python (the kernels' C sources, the web page, the recipes) is in the
    wheel: a data file added or moved without updating pyproject's package-data fails here."""
    wheel, _ = installed
    try:
        tracked = run(["git", "ls-files", "src/acik"], cwd=ROOT).stdout.split()
    except (OSError, AssertionError):  # not a git checkout: every file there
        tracked = [str(p.relative_to(ROOT)) for p in (ROOT / "src/acik").rglob("*") if p.is_file()]
    data = {p.removeprefix("src/") for p in tracked if not p.endswith((".py", ".pyc"))}
    assert {"acik/kernels/cpu_matmul.c", "acik/kernels/cpu_training.c", "acik/serve/static/index.html"} <= data
    assert data - set(zipfile.ZipFile(wheel).namelist()) == set()


SCRIPT = r"""
import json, sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import torch
    from torch import nn
    import acik
    from acik.config import ModelConfig
    from acik.kernels import cpu_matmul, cpu_training
    from acik.model import Transformer
    from acik.quant.linear import Int8Linear
    from acik.train.loop import token_losses

    calls = {}
    for name in ("causal_attention", "rms_norm", "swiglu", "cross_entropy"):  # count what the model reaches
        def counted(*args, _real=getattr(cpu_training, name), _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _real(*args, **kwargs)
        setattr(cpu_training, name, counted)

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = Transformer(cfg)
    model.init_weights(0)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 97, (2, 33))
    loss = token_losses(model(ids[:, :-1]), ids[:, 1:]) / ids[:, 1:].numel()
    loss.backward()
    opt.step()
    changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

    layer = Int8Linear.from_linear(nn.Linear(64, 32))
    x = torch.randn(3, 64)
    with torch.no_grad():
        y = layer(x)
        ref = x @ layer.dequantize().T + layer.bias
print(json.dumps(dict(
    file=acik.__file__, loss=loss.item(), changed=changed, params=len(before), training_calls=calls,
    training_library=cpu_training.library() is not None, int8_kernel=layer._kernel[0],
    int8_err=((y - ref).abs().max() / ref.abs().max()).item(),
    warnings=[f"{w.category.__name__}: {w.message}" for w in caught if "acik" in str(w.message)])))
"""


def test_installed_wheel_trains_and_runs_int8_with_its_kernels(installed, tmp_path):
    """From a folder outside the checkout, with only the installed copy on the path: one training step through
    acik's CPU training kernels and one int8 matmul through its int8 kernel (where the checkout's kernels build
    here; elsewhere PyTorch's operators, with a warning)."""
    _, site = installed
    expect_kernels = cpu_training.library() is not None and cpu_matmul.available()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ACIK_CPU_KERNELS", "ACIK_CPU_KERNEL_MARCH")}
    env["PYTHONPATH"] = str(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = run([sys.executable, "-c", SCRIPT], cwd=elsewhere, env=env).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert Path(got["file"]).resolve().is_relative_to(site.resolve()), f"imported {got['file']}, not the install"
    assert 3.0 < got["loss"] < 6.0 and got["changed"] == got["params"], got  # ln(97) = 4.57 at random init
    assert got["int8_err"] < 2e-2, got
    if expect_kernels:
        assert got["training_library"] and got["int8_kernel"] == "acik", got
        assert set(got["training_calls"]) == {"causal_attention", "rms_norm", "swiglu", "cross_entropy"}, got
        assert got["warnings"] == [], got
    else:
        assert got["int8_kernel"] == "aten", got


@pytest.fixture
def fresh_kernels(monkeypatch, tmp_path):
    """The kernels looked up anew, with an empty cache, during the test and again after it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("ACIK_CPU_KERNELS", raising=False)

    def forget():
        build.compile_library.cache_clear()
        cpu_matmul._library.cache_clear()
        cpu_training._LOADED.clear()
    forget()
    yield
    forget()


def int8_outputs() -> torch.Tensor:
    with torch.random.fork_rng():  # the same layer each call, and the other tests' random numbers left alone
        torch.manual_seed(1)
        layer = Int8Linear.from_linear(nn.Linear(64, 32))
        x = torch.randn(3, 64)
    with torch.no_grad():
        return torch.cat([layer(x), layer(x)])  # twice: the second call must not warn again


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64")
                    or "OpenMP" not in torch.__config__.parallel_info(),
                    reason="acik's kernels are built only on Linux x86-64 with an OpenMP torch")
@pytest.mark.parametrize("fault", ["source missing", "compile error"])
def test_a_kernel_that_cannot_be_built_warns_once_and_falls_back(fault, fresh_kernels, monkeypatch, tmp_path):
    """An install without cpu_matmul.c, or a compiler that fails: one KernelUnavailableWarning naming the cause,
    and the same numbers as PyTorch's path chosen on purpose (ACIK_CPU_KERNELS=0)."""
    monkeypatch.setenv("ACIK_CPU_KERNELS", "0")
    reference = int8_outputs()
    monkeypatch.delenv("ACIK_CPU_KERNELS")
    if fault == "source missing":
        monkeypatch.setattr(build, "HERE", tmp_path / "no-sources")
    else:
        monkeypatch.setenv("CC", shutil.which("false") or "false")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = int8_outputs()
        assert not cpu_matmul.available()
    kernel_warnings = [w for w in caught if issubclass(w.category, build.KernelUnavailableWarning)]
    assert len(kernel_warnings) == 1, [str(w.message) for w in caught]
    message = str(kernel_warnings[0].message)
    assert "cpu_matmul" in message and ("cannot be read" if fault == "source missing" else "failed") in message
    assert torch.equal(got, reference)
