# nsbox — two commands for a newcomer on a fresh Debian 12 machine, as root:
#   make demo   runs a real two-container pod
#   make test   runs the test suite
# Both install what they need first: Debian packages when missing, a
# virtualenv in .venv, and nsbox built with its native parts.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip -q --disable-pip-version-check
# gcc/libc6-dev: the native parts; musl-tools: nsbox-init is linked
# statically against musl (glibc's static start-up costs 0.5 ms more per pod);
# python3-dev: cffi's extension; libcap-dev: python-prctl;
# procps/iproute2/util-linux/iputils-ping: tools the tests and the demo call;
# nftables: nft, for port publishing; containernetworking-plugins, runc, crun,
# busybox-static: the real CNI plugins and OCI runtimes the interop tests drive.
APT_PACKAGES := gcc libc6-dev musl-tools python3-dev libcap-dev procps iproute2 util-linux iputils-ping nftables \
                containernetworking-plugins runc crun busybox-static
SOURCES := $(shell find nsbox -name '*.py' -o -name '*.c' -o -name '*.h' -o -name '*.cdef') setup.py pyproject.toml
PYTEST_ARGS ?=
# Pods alive in the bench's scale section: make bench SCALE=10000
# (PERF=1: perf record -a -g over the first and the last block of nsbox's run)
SCALE ?= 1000
PERF ?=
# Pinned: a new release's new checks must not turn main red by themselves.
LINTERS := "ruff==0.17.6" "mypy==2.4.1"

.PHONY: all test lint demo bench sysdeps install clean

all: install

sysdeps:
	@if command -v dpkg >/dev/null 2>&1; then \
	  missing=""; \
	  for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "make: installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	else echo "make: no dpkg here; make sure these are installed: $(APT_PACKAGES)"; fi

$(VENV)/.deps: pyproject.toml Makefile | sysdeps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install setuptools wheel "cffi>=1.15" "pytest>=7" "pytest-xdist>=3" "pyroute2>=0.7" "python-prctl>=1.8" $(LINTERS)
	touch $@

$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	$(PIP) install --no-build-isolation --no-deps --force-reinstall .
	rm -rf build
	touch $@

install: $(VENV)/.installed

# The package as its users' tools see it: a linter and a type checker, clean.
lint: install
	$(VENV)/bin/ruff check nsbox tests benchmarks examples
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: install
	$(PY) examples/two_container_pod.py

# Benchmarks (not a setup command): nsbox against shell, ip -batch, pyroute2
# and a hand-written netlink floor; tini/catatonit are peers for holder memory;
# SCALE pods alive at once (issue 13), nsbox against the floor plans.
bench: install
	@for p in tini catatonit linux-perf; do dpkg -s $$p >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$p >/dev/null || echo "make: could not install $$p"; }; done
	$(PY) benchmarks/bench.py --write-docs --scale $(SCALE) $(if $(PERF),--perf)

clean:
	rm -rf $(VENV) build *.egg-info nsbox/_native/_nsbox.c nsbox/_native/*.so nsbox/_native/nsbox-init
