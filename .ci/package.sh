#!/usr/bin/env bash
# CI, packaging: build the sdist and the wheel, check that the package data ships in both, install the wheel into
# a fresh venv (torch==2.13.0, the CPU build on this machine's disk, and the sweep extra), and use the installed
# package from outside the checkout: `decoupled sweep --preset smoke` and one optimizer step on the native kernel.
# Usage: .ci/package.sh PYTHON   (a python with the `build` package: the dev venv's)
set -euo pipefail
cd "$(dirname "$0")/.."
python="$1"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

"$python" -m build --outdir "$scratch/dist" . > "$scratch/build.log" 2>&1 || { cat "$scratch/build.log"; exit 1; }
sdist=("$scratch"/dist/decoupled-*.tar.gz)
wheel=("$scratch"/dist/decoupled-*.whl)
"$python" - "${sdist[0]}" "${wheel[0]}" <<'PY'
import sys, tarfile, zipfile
sdist, wheel = sys.argv[1], sys.argv[2]
needed = ["decoupled/py.typed", "decoupled/kernels/csrc/sgd.c", "decoupled/kernels/csrc/adam.c",
          "decoupled/kernels/csrc/common.h", "decoupled/experiments/presets/default.toml",
          "decoupled/experiments/presets/smoke.toml", "decoupled/experiments/presets/paper.toml",
          *[f"decoupled/experiments/presets/findings/f{i}.toml" for i in range(1, 6)],
          "decoupled/experiments/templates/report.j2"]
wheel_names = set(zipfile.ZipFile(wheel).namelist())
sdist_names = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
missing = [n for n in needed if n not in wheel_names] + [n for n in needed if f"src/{n}" not in sdist_names]
assert not missing, f"package data missing from the sdist or the wheel: {missing}"
print(f"package data ships: {len(needed)} files in {wheel.rsplit('/', 1)[1]} and the sdist")
PY

python3 -m venv "$scratch/venv"
"$scratch/venv/bin/pip" install -q "torch==2.13.0" "${wheel[0]}[sweep]" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
cd "$scratch"  # away from the checkout: only the installed package can be imported
export DECOUPLED_CACHE_DIR="$scratch/kernel-cache"  # the native kernel is compiled from the installed C source
"$scratch/venv/bin/decoupled" --version
"$scratch/venv/bin/decoupled" sweep --preset smoke --out "$scratch/smoke" > "$scratch/smoke.log"
tail -2 "$scratch/smoke.log"
test -s "$scratch/smoke/report.md" && test -s "$scratch/smoke/results.sqlite"
"$scratch/venv/bin/python" - <<'PY'
import torch, decoupled
from decoupled.kernels import native
assert "site-packages" in decoupled.__file__, decoupled.__file__
model = torch.nn.Linear(4, 2)
optimizer = decoupled.SGDW(model.parameters(), lr=0.1, weight_decay=1e-2)
before = model.weight.detach().clone()
torch.nn.functional.mse_loss(model(torch.randn(8, 4)), torch.randn(8, 2)).backward()
optimizer.step()
assert not torch.equal(before, model.weight), "the step changed nothing"
assert native.available(), native.unavailable_reason()
print(f"installed {decoupled.__file__}: an SGDW step ran; native kernel available")
PY
