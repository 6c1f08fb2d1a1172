# The two commands a newcomer runs on a fresh Debian machine:
#   make demo   - install everything, run pushproxy in front of a local Dovecot, show pushes arriving
#   make test   - install everything, run the whole test suite (what CI runs)
# and CI's third:
#   make docker-test - build the images and check the compose stack (tests/docker/check_stack.py);
#                      starts dockerd if no engine answers; skips (one loud line) only when no
#                      Docker engine can run on the machine at all

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := dovecot-imapd dovecot-lmtpd isync openssl ca-certificates postgresql e2fsprogs prometheus
PYTEST_ARGS ?=

DOCKERD_PIDFILE ?= /run/pushproxy-docker-test-dockerd.pid

.PHONY: all deps system-deps python-deps test lint typecheck unit demo bench clean docker-test chaos

all: test

deps: system-deps python-deps

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

python-deps: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

lint: python-deps
	$(BIN)/ruff check pushproxy tests bench
	$(BIN)/ruff format --check pushproxy tests bench

typecheck: python-deps
	$(BIN)/mypy pushproxy

unit: python-deps
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

# The suite runs on the default loop (uvloop); the proxy-facing tests run once
# more on the standard asyncio loop, the fallback, so that both stay tested.
STDLOOP_TESTS := tests/integration/test_proxy_core.py tests/integration/test_xapplepush_proxy.py \
                 tests/integration/test_webpush_proxy.py tests/integration/test_watch_dovecot.py

test: deps lint typecheck
	$(BIN)/pytest -q -ra $(PYTEST_ARGS)
	PUSHPROXY_RUNTIME__EVENT_LOOP=asyncio $(BIN)/pytest -q -ra $(STDLOOP_TESTS)

# Release check: the fault campaign, long (PostgreSQL down past lease_ttl, three cycles of every fault).
chaos: deps
	PUSHPROXY_CHAOS=1 $(BIN)/pytest -q -ra tests/integration/test_fault_campaign.py $(PYTEST_ARGS)

docker-test: deps
	@rc=0; tests/docker/engine.sh start $(DOCKERD_PIDFILE) || rc=$$?; \
	if [ $$rc -eq 3 ]; then \
	  echo "!!!!!!!!!! docker-test SKIPPED: no Docker engine can run on this machine (see above) !!!!!!!!!!"; \
	  exit 0; \
	fi; \
	[ $$rc -eq 0 ] || exit $$rc; \
	rc=0; $(BIN)/python -m tests.docker.check_stack || rc=$$?; \
	tests/docker/engine.sh stop $(DOCKERD_PIDFILE); \
	exit $$rc

demo: deps
	$(BIN)/python deploy/demo/demo.py

bench: deps
	$(BIN)/python bench/passthrough.py
	$(BIN)/python bench/webpush.py
	$(BIN)/python bench/watchers.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-state
