# PostgreSQL from Debian's packages, for engines that cannot pull the official postgres image
# (docker-compose.local.yml). It takes the same settings as the official image:
# POSTGRES_USER, POSTGRES_PASSWORD (required), POSTGRES_DB, PGDATA.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ARG PG_MAJOR=15
ENV PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
# The package's post-install makes a cluster of its own; the entrypoint makes ours in PGDATA.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
         "postgresql-${PG_MAJOR}" \
    && rm -rf /var/lib/apt/lists/* "/var/lib/postgresql/${PG_MAJOR}" "/etc/postgresql/${PG_MAJOR}" \
    && mkdir -p "$PGDATA" /var/run/postgresql \
    && chown postgres:postgres "$PGDATA" /var/run/postgresql \
    && chmod 0700 "$PGDATA"
COPY docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
RUN chmod 0755 /usr/local/bin/postgres-entrypoint
USER postgres
STOPSIGNAL SIGINT
ENTRYPOINT ["postgres-entrypoint"]
CMD ["postgres"]
