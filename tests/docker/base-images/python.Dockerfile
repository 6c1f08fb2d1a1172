# Stand-in for python:3.11-slim where no registry is reachable (made by tests/docker/check_stack.py):
# Debian 12's own Python 3.11 with venv, reachable as `python` like in the official image.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3 /usr/local/bin/python
LABEL org.pushproxy.test-standin="python:3.11-slim"
CMD ["python3"]
