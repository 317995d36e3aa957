#!/usr/bin/env bash
# The test command (README). Sets up the environment, then runs pytest on 2-4 gloo processes per test.
#   tests/run.sh                      # default suite, what CI runs: the versions of tests/constraints.txt
#   tests/run.sh --slow               # also the slow tests (Slurm cluster on loopback, long trainings, sweeps)
#   tests/run.sh tests/tensor_parallel  # any pytest arguments (test files or directories given: only those run)
#   tests/run.sh --latest             # the newest releases of every dependency (.venv-latest), default suite
#   tests/run.sh --latest --freeze    # ... and when it passes, write its versions to tests/constraints.txt
#   tests/run.sh --megatron 0.19.2    # tests/megatron/test_*.py against that megatron-core release
# (MOT_LATEST=1 is --latest.) docs/testing.md says what each lane exercises.
set -euo pipefail
cd "$(dirname "$0")/.."
freeze="" megatron=""
while [ $# -gt 0 ]; do
  case "$1" in
    --latest) export MOT_LATEST=1; shift ;;
    --freeze) freeze=1; shift ;;
    --megatron) [ $# -ge 2 ] || { echo "error: --megatron needs a version, e.g. --megatron 0.19.2" >&2; exit 2; }
                megatron="$2"; shift 2 ;;
    *) break ;;
  esac
done
if [ -n "${MOT_LATEST:-}" ] && [ -n "${MOT_PYTHON:-}" ]; then
  echo "error: --latest makes its own .venv-latest; unset MOT_PYTHON (it would upgrade that environment)" >&2; exit 2
fi
if [ -n "$megatron" ] && ! [[ "$megatron" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
  echo "error: --megatron $megatron: give a release number such as 0.19.2" >&2; exit 2
fi
args=("$@"); set --  # setup_env.sh reads its own arguments
source launch/setup_env.sh "mpi,megatron,dev"
tests=(tests)
for a in ${args[@]+"${args[@]}"}; do  # test files or ids given: run those, not the whole suite
  [[ "$a" != -* && -e "${a%%::*}" ]] && tests=()
done
if [ -n "$megatron" ]; then
  # that release's Python modules before the environment's own megatron-core (wheels of megatron-core >= 0.17
  # are tagged for Python >= 3.12; their Python code runs on 3.11 too); 0.19 imports triton at load
  lane="$stamp_dir/megatron-$megatron"  # set by setup_env.sh: the venv (or .venv-stamps beside MOT_PYTHON)
  if [ ! -f "$lane/.complete" ]; then
    echo "[run.sh] installing megatron-core $megatron into $lane"
    rm -rf "$lane"
    "$MOT_PY" -m pip install -q --no-deps --only-binary=:all: --python-version 3.12 --ignore-requires-python \
      --target "$lane" "megatron-core==$megatron"
    "$MOT_PY" -m pip install -q --no-deps --target "$lane/triton" ${MOT_CONSTRAINTS:+-c "$MOT_CONSTRAINTS"} triton
    touch "$lane/.complete"
  fi
  export PYTHONPATH="$lane:$lane/triton${PYTHONPATH:+:$PYTHONPATH}"
  # the release's own requirements (torch, numpy, packaging) must hold in this environment, since --no-deps
  found="$("$MOT_PY" - <<'PY'
from importlib.metadata import distribution, version
from packaging.requirements import Requirement
from packaging.version import Version
import megatron.core as m
for r in map(Requirement, distribution("megatron-core").requires or []):
    if (r.marker is None or r.marker.evaluate({"extra": ""})) and version(r.name) not in r.specifier:
        raise SystemExit(f"error: megatron-core {m.__version__} needs {r}; installed {version(r.name)}")
print(Version(m.__version__).public)  # 0.19 appends the commit of the working directory's git repository
PY
)"
  [ "$found" = "$megatron" ] || { echo "error: megatron.core reports $found, not $megatron" >&2; exit 1; }
  echo "[run.sh] megatron-core $found from $lane"
  tests=(tests/megatron/test_*.py)
fi
[ -n "$freeze" ] || exec "$MOT_PY" -m pytest -q "${tests[@]}" ${args[@]+"${args[@]}"}
status=0
"$MOT_PY" -m pytest -q "${tests[@]}" ${args[@]+"${args[@]}"} || status=$?
if [ -n "$freeze" ] && [ "$status" = 0 ]; then  # the environment that just passed becomes the pins
  new="$(mktemp)"
  { sed -n "/^#/{/CI's Python/!p}" tests/constraints.txt
    "$MOT_PY" -c "import sys; print(\"# CI's Python: %d.%d\" % sys.version_info[:2])"
    "$MOT_PY" -m pip freeze --exclude-editable | grep -v -i '^mot[-_]parallel' | sed -E 's/^(torch==[^+]*)\+.*/\1/'
  } > "$new"
  # pins of packages only a lane installs (triton for --megatron) stay
  grep -v '^#' tests/constraints.txt | while IFS= read -r pin; do
    grep -qi "^${pin%%==*}==" "$new" || echo "$pin"
  done >> "$new"
  mv "$new" tests/constraints.txt
  echo "[run.sh] wrote tests/constraints.txt from $MOT_PY"
fi
exit "$status"
