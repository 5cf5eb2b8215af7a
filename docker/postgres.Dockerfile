# The event store: Debian's PostgreSQL 15, run as a non-root user. The superuser's password is a
# mounted file; rbee's roles and schema are made by `rbee cluster bootstrap`.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql-15 \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /data --shell /usr/sbin/nologin rbee
COPY postgres-entrypoint /usr/local/bin/postgres-entrypoint
USER 10001
WORKDIR /data
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]
