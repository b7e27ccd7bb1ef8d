#!/bin/sh
# Install torch into the active virtual environment (image build step).
#
#   TORCH_VARIANT=cuda  torch==$TORCH_VERSION from PyPI: on Linux x86_64 PyPI's wheel IS the CUDA build
#                       (about 0.5 GB, plus ~3 GB of nvidia-* CUDA 13 wheels and triton).
#   TORCH_VARIANT=cpu   the CPU-only build (about 0.2 GB, no nvidia-* wheels). PyPI has no CPU-only
#                       Linux x86_64 wheel, so it comes from, in this order:
#                         1. a wheel in docker/wheels/ (torch-$TORCH_VERSION+cpu-cp311-*.whl), copied there
#                            by the build host (for hosts that reach PyPI but not download.pytorch.org);
#                         2. $TORCH_CPU_INDEX_URL (default https://download.pytorch.org/whl/cpu).
#                       On aarch64 PyPI's wheel is already CPU-only and is used.
set -eu
: "${TORCH_VARIANT:=cuda}" "${TORCH_VERSION:=2.13.0}"
: "${TORCH_CPU_INDEX_URL:=https://download.pytorch.org/whl/cpu}"
: "${PIP_INDEX_URL:=https://pypi.org/simple}"
WHEELS=${1:-/tmp/wheels}

case "$TORCH_VARIANT" in
cuda)
    pip install "torch==$TORCH_VERSION"
    ;;
cpu)
    pyver=$(python -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    local_wheel=$(ls "$WHEELS"/torch-"$TORCH_VERSION"+cpu-"$pyver"-*.whl 2>/dev/null | head -n 1 || true)
    if [ "$(uname -m)" = aarch64 ]; then
        pip install "torch==$TORCH_VERSION"
    elif [ -n "$local_wheel" ]; then
        echo "install_torch.sh: using the local wheel $local_wheel"
        pip install "$local_wheel"      # its dependencies (sympy, networkx, ...) come from PyPI
    else
        echo "install_torch.sh: no $WHEELS/torch-$TORCH_VERSION+cpu-$pyver-*.whl; trying $TORCH_CPU_INDEX_URL"
        pip install --index-url "$TORCH_CPU_INDEX_URL" --extra-index-url "$PIP_INDEX_URL" "torch==$TORCH_VERSION+cpu" || {
            echo "install_torch.sh: the CPU build of torch $TORCH_VERSION is not reachable. Put" \
                 "torch-$TORCH_VERSION+cpu-$pyver-manylinux_2_28_x86_64.whl in docker/wheels/ (see docker/wheels/README.md)," \
                 "set --build-arg TORCH_CPU_INDEX_URL=<a mirror>, or build the default (CUDA) variant." >&2
            exit 1
        }
    fi
    ;;
*)
    echo "install_torch.sh: TORCH_VARIANT must be cuda or cpu, not '$TORCH_VARIANT'" >&2
    exit 1
    ;;
esac

python - "$TORCH_VARIANT" "$TORCH_VERSION" <<'PY'
import sys
import torch
variant, version = sys.argv[1:]
assert torch.__version__.split("+")[0] == version, f"torch {torch.__version__} installed, {version} wanted"
if variant == "cpu":
    assert torch.version.cuda is None, f"a CUDA build of torch ({torch.version.cuda}) was installed for the cpu variant"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) installed")
PY
