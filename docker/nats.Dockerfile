# nats-server, the one `rbee setup` installs (>= 2.10), run as a non-root user with its
# configuration mounted at /run/rbee and its JetStream store at /data.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /data --shell /usr/sbin/nologin nats
COPY bin/nats-server /usr/local/bin/nats-server
USER 10001
WORKDIR /data
ENTRYPOINT ["/usr/local/bin/nats-server", "-c", "/run/rbee/nats.conf"]
