# The HTTP load balancer in front of the queens: Debian's HAProxy, run as a non-root user with its
# configuration mounted at /run/rbee.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends haproxy \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*
USER 10001
ENTRYPOINT ["/usr/sbin/haproxy", "-W", "-db", "-f", "/run/rbee/haproxy.cfg"]
