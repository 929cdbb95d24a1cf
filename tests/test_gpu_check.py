"""bench/gpu_check.sh, the one script a GPU node runs (doc/gpu.md), in its CPU smoke form:
every phase runs and passes, and the output folder holds exactly the documented files."""
import json
import math
import os
import subprocess

import pytest

from conftest import REPO

FILES = {"gpu_check.log", "summary.json", "pytest.log", "bench.log", "bench.md", "bench.json", "recipe.log",
         "recipe.json"}


@pytest.mark.slow
def test_gpu_check_smoke_writes_every_file(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    env.pop("LL_CUDA_SMOKE", None)
    p = subprocess.run(["bash", "bench/gpu_check.sh", "--smoke"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=1500)
    assert p.returncode == 0, p.stdout + p.stderr
    assert set(os.listdir(out)) == FILES  # what comes back from a device run: at most 8 files
    summary = json.loads((out / "summary.json").read_text())
    assert summary["smoke"] is True and set(summary["phases"]) == {"pytest", "bench", "recipe"}
    assert summary["all_passed"], summary["phases"]
    assert "1 passed" in (out / "pytest.log").read_text() and "PASSED" in (out / "pytest.log").read_text()
    bench = json.loads((out / "bench.json").read_text())
    assert bench["machine"]["model"] == "resnet20" and bench["machine"]["floor_s"] > 0
    rows = {(r["precision"], r["engine"]): r for r in bench["rows"]}
    for prec in ("fp32", "tf32", "bf16"):
        for eng in ("eager", "fused", "fused, K=2"):
            r = rows[(prec, eng)]
            assert r["s_per_point"] > 0 and r["surface_51x51_min"] == pytest.approx(r["s_per_point"] * 2601 / 60)
            assert r["rel_loss_error_vs_fp32"] < 1e-2, r
    assert rows[("fp32", "eager")]["rel_loss_error_vs_fp32"] == 0
    assert "| bf16 | fused |" in (out / "bench.md").read_text()
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["surf_file_read"] and recipe["done"] and recipe["points"] == 9, recipe
    assert recipe["mpiexec"], "the smoke run found no mpiexec here"
    losses = [v for row in recipe["train_loss"] for v in row]
    assert len(losses) == 9 and all(math.isfinite(v) and v > 0 for v in losses)
    log = (out / "gpu_check.log").read_text()
    assert "== torch" in log and "phase recipe: exit 0" in log
    # the scratch folder (data, surface, wheels) is gone
    assert not [f for f in os.listdir(tmp_path) if f.startswith("gpu_check.")]
