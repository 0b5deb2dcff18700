FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md requirements.lock ./
# Exact, hash-checked dependency versions (the ones CI passed with), then the project alone.
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY shared ./shared
COPY services ./services
RUN pip install --no-cache-dir --no-deps .
# One image, one service per container: `runledger service ingress|transitions|projector`.
ENTRYPOINT ["runledger"]
