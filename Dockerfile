FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md queues.py schedules.yaml ./
COPY app ./app
COPY workers ./workers
# Editable: app.config.PROJECT_ROOT is the source tree, where schedules.yaml and the run directory (var/) live;
# a plain install would put it in site-packages, which holds neither.
RUN pip install -e . \
    && useradd --system --home-dir /app bullrq \
    && mkdir -p /app/var \
    && chown bullrq /app/var
USER bullrq

EXPOSE 8000
CMD ["bullrq", "web", "--host", "0.0.0.0", "--port", "8000"]
