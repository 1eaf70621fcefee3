# syntax=docker/dockerfile:1

# The runner's image: `runner run` by default, and `runner migrate` for the release
# step (docker run IMAGE migrate), as in the Procfile. It needs DATABASE_URL: the
# embedded PostgreSQL of `runner[embedded]` is not installed here.

FROM python:3.11-slim-bookworm AS build
# A virtual environment moves to the final stage whole, without pip's cache or what
# the build of the package leaves behind.
RUN python -m venv /opt/runner
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runner runner
COPY handlers handlers
RUN /opt/runner/bin/pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin runner
COPY --from=build /opt/runner /opt/runner
# The metrics endpoint listens on 127.0.0.1 by default, which no other container
# could reach.
ENV PATH=/opt/runner/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RUNNER_LOG_FORMAT=json \
    RUNNER_METRICS_HOST=0.0.0.0 \
    RUNNER_METRICS_PORT=9464
USER 10001
EXPOSE 9464
# Slim images have no curl. No proxy: a proxy set in the environment must not see
# a request to the container itself.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; \
        url = 'http://127.0.0.1:%s/healthz' % os.environ['RUNNER_METRICS_PORT']; \
        r.build_opener(r.ProxyHandler({})).open(url, timeout=4)"]
ENTRYPOINT ["runner"]
CMD ["run"]
