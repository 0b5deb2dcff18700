FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN pip install --no-cache-dir .
# One image, one service per container: `runledger service ingress|transitions|projector`.
ENTRYPOINT ["runledger"]
