# mailflow milter image (Debian 12, Debian's python3). The MTA connects to port 8890.
#   docker build -t mailflow .
#   README.md, "Containers": the docker run line, the key and the volume.
FROM debian:12-slim AS build

# DL3008: Debian 12's current packages (security updates), not versions pinned by hand.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc g++ pkg-config libicu-dev libmilter-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY requirements.lock setup.cfg pyproject.toml README.md ./
COPY mailflow ./mailflow
# The same layout as the Debian package: a venv at /usr/lib/mailflow with the runtime pins only.
RUN python3 -m venv /usr/lib/mailflow \
 && /usr/lib/mailflow/bin/pip install --no-cache-dir -c requirements.lock . \
 && /usr/lib/mailflow/bin/pip uninstall -y pip setuptools

FROM debian:12-slim

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libicu72 libmilter1.0.1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10025 mailflow \
 && useradd --system --uid 10025 --gid mailflow --home-dir /var/lib/mailflow --shell /usr/sbin/nologin mailflow \
 && install -d -o mailflow -g mailflow -m 0750 /var/lib/mailflow

COPY --from=build /usr/lib/mailflow /usr/lib/mailflow
COPY conf/container.toml /etc/mailflow/mailflow.toml
ENV PATH=/usr/lib/mailflow/bin:$PATH \
    MAILFLOW_CONFIG=/etc/mailflow/mailflow.toml

VOLUME ["/var/lib/mailflow"]
USER 10025:10025
EXPOSE 8890
# Alive = the milter accepts a connection on its port (the port of conf/container.toml).
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
  CMD ["/usr/lib/mailflow/bin/python", "-c", "import socket; socket.create_connection(('127.0.0.1', 8890), 5).close()"]
ENTRYPOINT ["/usr/lib/mailflow/bin/mailflow"]
CMD ["run"]
