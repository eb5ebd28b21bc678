# mailflow milter image (Debian 12, Python 3.11). Listens on 8890 for the MTA.
#   docker build -t mailflow .
#   docker run -p 127.0.0.1:8890:8890 -v /etc/mailflow:/etc/mailflow:ro mailflow
FROM debian:12-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc g++ pkg-config libicu-dev libicu72 libmilter-dev libmilter1.0.1 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/mailflow
COPY requirements.lock setup.cfg pyproject.toml README.md ./
COPY mailflow ./mailflow
RUN python3 -m venv /opt/mailflow/venv \
 && /opt/mailflow/venv/bin/pip install --no-cache-dir -r requirements.lock \
 && /opt/mailflow/venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
 && apt-get purge -y gcc g++ pkg-config libicu-dev python3-dev libmilter-dev && apt-get autoremove -y \
 && useradd --system --home /var/lib/mailflow --create-home mailflow

COPY conf/mailflow.toml /etc/mailflow/mailflow.toml
# In a container the milter must listen beyond loopback; the MTA reaches it through the port map.
RUN sed -i 's/^socket = .*/socket = "inet:8890@0.0.0.0"/' /etc/mailflow/mailflow.toml

USER mailflow
EXPOSE 8890
ENTRYPOINT ["/opt/mailflow/venv/bin/mailflow"]
CMD ["run", "-c", "/etc/mailflow/mailflow.toml"]
