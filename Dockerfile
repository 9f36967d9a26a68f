# Gateway image (light profile: no torch). Training/serving images come with their issues.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY finetune finetune
COPY serving serving
COPY storage storage
RUN pip install --no-cache-dir ".[postgres]"
EXPOSE 8000
CMD ["tunegate", "serve", "--host", "0.0.0.0"]
