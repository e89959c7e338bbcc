# A small image of one lobby node. Embedded mode by default; set LOBBY_REDIS_URL
# (and the LOBBY_FLEETIQ_* / LOBBY_DYNAMODB_* variables) for a real deployment.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lobby ./lobby
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --no-create-home lobby
USER lobby
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
ENTRYPOINT ["lobby"]
CMD ["serve", "--host", "0.0.0.0"]
