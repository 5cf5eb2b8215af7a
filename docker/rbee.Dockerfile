# The rbee processes: rbee-queen, rbee-hive (which starts rbee-worker) and the rbee CLI.
# BASE is any Debian bookworm image; scripts/docker-base makes one without a registry.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
# A hive downloads models over HTTPS: it needs the system's certificate authorities.
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /data --shell /usr/sbin/nologin rbee
COPY bin/rbee bin/rbee-queen bin/rbee-hive bin/rbee-worker /usr/local/bin/
COPY rbee-entrypoint /usr/local/bin/rbee-entrypoint
USER 10001
WORKDIR /data
ENTRYPOINT ["/usr/local/bin/rbee-entrypoint"]
CMD ["rbee", "--help"]
