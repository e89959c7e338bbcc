# One lobby node. Embedded mode by default; set LOBBY_REDIS_URL (and the
# LOBBY_FLEETIQ_* / LOBBY_DYNAMODB_* variables) for a real deployment, and the
# port with LOBBY_PORT (the HEALTHCHECK reads it). docker-compose.yml runs the
# whole system.
FROM python:3.11-slim AS build
WORKDIR /src
# The dependencies get their own layer, keyed on pyproject.toml alone: a code
# change rebuilds only the small layer of the package itself.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && pip install --no-cache-dir --prefix=/install -r requirements.txt
COPY README.md ./
COPY lobby ./lobby
RUN pip install --no-cache-dir --no-deps --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
# A numeric user: Kubernetes' runAsNonRoot can verify it (a name it cannot).
USER 10001
ENV LOBBY_HOST=0.0.0.0 \
    LOBBY_PORT=8080 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
# Readiness, not liveness: a node whose Redis is gone reports unhealthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s \
  CMD ["python", "-c", "import os, sys, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('LOBBY_PORT', '8080'), timeout=2); sys.exit(0)"]
# SIGTERM (docker stop) drains: clients get 1012 and --drain-seconds (10) to move;
# give docker stop a longer grace period than that (stop_grace_period in compose).
STOPSIGNAL SIGTERM
ENTRYPOINT ["lobby"]
CMD ["serve"]
