#!/usr/bin/env bash
# Create/refresh the project's Python environment; sourced by launch/demo.sh and tests/run.sh.
#
#   source launch/setup_env.sh [extras]     # extras for pip, default "mpi"; sets MOT_PY
#
# Idempotent: pip runs only when setup.py or this file changed since the last run (stamp in the venv).
# CPU machines (laptops, CI): a .venv with torch==2.13.0 (MOT_TORCH_SPEC), a CPU wheel on this kind of
#   machine; elsewhere add MOT_TORCH_INDEX=https://download.pytorch.org/whl/cpu to avoid a CUDA download.
# GPU clusters keep their own CUDA torch, either way:
#   MOT_PYTHON=/path/to/env/bin/python   use that interpreter as is (no venv; torch untouched), or
#   MOT_VENV_SYSTEM_SITE=1               create .venv with --system-site-packages (sees the system torch).
# torch is only installed when `import torch` fails; setup.py asks for a range, never a pin.
# Versions: a .venv made here installs the pins of tests/constraints.txt (the versions CI tests together;
#   MOT_CONSTRAINTS=FILE for another, MOT_CONSTRAINTS= for none); an environment you bring (MOT_PYTHON,
#   MOT_VENV_SYSTEM_SITE) only gets setup.py's ranges. MOT_LATEST=1 (tests/run.sh --latest): .venv-latest with
#   the newest release of every dependency, upgraded on every call (torch stays MOT_TORCH_SPEC).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-mpi}"
if [ -n "${MOT_PYTHON:-}" ]; then
  MOT_PY="$MOT_PYTHON"
  stamp_dir="$root/.venv-stamps"
else
  venv="${MOT_VENV:-$root/.venv${MOT_LATEST:+-latest}}"
  if [ ! -x "$venv/bin/python" ]; then
    echo "[setup_env] creating $venv"
    python3 -m venv ${MOT_VENV_SYSTEM_SITE:+--system-site-packages} "$venv"
  fi
  MOT_PY="$venv/bin/python"
  stamp_dir="$venv"
fi
mkdir -p "$stamp_dir"
export MOT_PY
# DeepSpeed compiles a small CPU comm op on first use (~1 min): cache it with the environment.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$stamp_dir/torch_extensions}"
export DS_BUILD_OPS=0 PIP_DISABLE_PIP_VERSION_CHECK=1
pins=()  # pip arguments that fix the versions
if [ -n "${MOT_LATEST:-}" ]; then
  MOT_CONSTRAINTS=""
elif [ -n "${MOT_PYTHON:-}" ] || [ -n "${MOT_VENV_SYSTEM_SITE:-}" ]; then
  MOT_CONSTRAINTS="${MOT_CONSTRAINTS:-}"  # your environment: only what you ask for
else
  MOT_CONSTRAINTS="${MOT_CONSTRAINTS-$root/tests/constraints.txt}"
fi
[ -z "$MOT_CONSTRAINTS" ] || pins=(-c "$MOT_CONSTRAINTS")
export MOT_CONSTRAINTS

want="$(cat "$root/setup.py" "${BASH_SOURCE[0]}" ${MOT_CONSTRAINTS:+"$MOT_CONSTRAINTS"} | sha256sum | cut -c1-16)-$extras"
stamp="$stamp_dir/.mot_setup_stamp"
if [ -n "${MOT_LATEST:-}" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if ! "$MOT_PY" -c "import torch" 2>/dev/null; then
    echo "[setup_env] installing ${MOT_TORCH_SPEC:-torch==2.13.0}"
    "$MOT_PY" -m pip install -q ${MOT_TORCH_INDEX:+--index-url "$MOT_TORCH_INDEX"} "${pins[@]}" \
      "${MOT_TORCH_SPEC:-torch==2.13.0}"
  fi
  if [ -n "${MOT_LATEST:-}" ]; then  # everything newest, except the torch just installed (a CPU build)
    held="$stamp_dir/held.txt"
    "$MOT_PY" -c "import torch; print('torch==' + torch.__version__)" > "$held"
    pins=(--upgrade --upgrade-strategy eager -c "$held")
  fi
  if [[ ",$extras," == *",mpi,"* ]] && ! command -v mpicc >/dev/null; then
    # mpi4py builds against an MPI library; on Debian/Ubuntu as root we can add Open MPI ourselves.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "[setup_env] installing Open MPI (apt)"
      { apt-get install -y -q libopenmpi-dev openmpi-bin >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libopenmpi-dev openmpi-bin >/dev/null 2>&1; }; } ||
        echo "[setup_env] apt could not install Open MPI; continuing without mpi4py"
    fi
    command -v mpicc >/dev/null || extras="$(echo ",$extras," | sed 's/,mpi,/,/; s/^,//; s/,$//')"
  fi
  if [[ ",$extras," == *,dev,* || ",$extras," == *,study,* ]] && ! command -v espeak-ng >/dev/null; then
    # the real-data corpus (tools/build_real_corpus.py) and its tests synthesise speech with espeak-ng
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "[setup_env] installing espeak-ng (apt)"
      { apt-get install -y -q espeak-ng >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q espeak-ng >/dev/null 2>&1; }; } ||
        echo "[setup_env] apt could not install espeak-ng; the real-data corpus and its tests need it"
    fi
  fi
  echo "[setup_env] pip install -e .[${extras}]"
  "$MOT_PY" -m pip install -q "${pins[@]}" -e "$root${extras:+[$extras]}"
  # DeepSpeed JIT-compiles a CPU shared-memory comm op at its first init; build it now, not mid-run
  "$MOT_PY" -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" >/dev/null 2>&1 || true
  echo "$want" > "$stamp"
fi
