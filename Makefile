# interceptd: set-up, run, test, bench.
#
# `make run` and `make test` each do the whole (idempotent) set-up first:
# Debian packages, kernel-header links for bcc, the virtualenv, the C build.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV    := .venv
PY      := $(VENV)/bin/python
CONFIG  ?= packaging/interceptd.toml
STATE   ?= /run/interceptd
KREL    := $(shell uname -r)

APT_PACKAGES := runc crun busybox-static fuse3 libfuse3-dev python3-bpfcc bpfcc-tools \
	linux-headers-amd64 lintian python3-venv python3-dev python3-cffi python3-setuptools \
	python3-pytest libc6-dev gcc make pkg-config util-linux uidmap docker.io \
	python3-prometheus-client prometheus python3-pyroute2 lxcfs \
	debootstrap clang-format python3-hypothesis

# The C build is redone only when its inputs change.
CORE_INPUTS := setup.py pyproject.toml $(wildcard csrc/*.c csrc/*.h interceptd/_build_core.py)

.PHONY: help setup bytecode systemd-image apt-packages kernel-headers venv launcher run test bench \
	clean distclean deb demo

help:
	@echo "make run    - set up, then run interceptd in the foreground ($(CONFIG))"
	@echo "make test   - set up, then ruff + the whole test suite"
	@echo "make bench  - set up, then every bench/bench_*.py"
	@echo "make demo   - set up, then a guided tour with busybox containers (cleans up after)"
	@echo "make deb    - set up, then build/interceptd_<version>_<arch>.deb (dpkg-deb)"
	@echo "make setup  - only the (idempotent) set-up"
	@echo "make clean  - remove build products (distclean: also the virtualenv)"

setup: apt-packages kernel-headers venv .stamp-build launcher bytecode systemd-image

# The heavy tests' systemd image (tests/integration/test_systemd.py): a Debian 12 rootfs
# from the configured mirror, built once and cached; offline, setup goes on without it.
SYSTEMD_IMAGE := tests/.build/systemd-rootfs
DEBIAN_MIRROR ?= $(shell awk '/^URIs:.*debian$$/ {print $$2; exit} /^deb .*debian/ {print $$2; exit}' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null)

systemd-image:
	@[ -x $(SYSTEMD_IMAGE)/lib/systemd/systemd ] || { 	  rm -rf $(SYSTEMD_IMAGE).tmp; mkdir -p tests/.build; 	  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm \
	    $(SYSTEMD_IMAGE).tmp $(DEBIAN_MIRROR) >/dev/null \
	  && mv $(SYSTEMD_IMAGE).tmp $(SYSTEMD_IMAGE) \
	  || { rm -rf $(SYSTEMD_IMAGE).tmp; \
	       echo "systemd image not built: the heavy systemd test is skipped"; }; }

apt-packages:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | grep -q '^install ok installed$$' \
	    || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	fi

# bcc compiles its programs against /lib/modules/$(uname -r)/build; a VM with
# a kernel not from Debian has no such directory, so point it at Debian's
# headers (close enough for the tracepoints and helpers we use).
kernel-headers:
	@mod=/lib/modules/$(KREL); \
	if [ ! -e "$$mod/build" ] || [ ! -e "$$mod/source" ]; then \
	  arch=$$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1); \
	  common=$$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1); \
	  if [ -z "$$arch" ] || [ -z "$$common" ]; then \
	    echo "warning: no Debian linux-headers found; eBPF features will be unavailable" >&2; \
	  else \
	    mkdir -p "$$mod"; \
	    [ -e "$$mod/build" ] || ln -sfn "$$arch" "$$mod/build"; \
	    [ -e "$$mod/source" ] || ln -sfn "$$common" "$$mod/source"; \
	  fi; \
	fi

venv: $(VENV)/.stamp-tools

$(VENV)/bin/python:
	/usr/bin/python3 -m venv --system-site-packages $(VENV)

$(VENV)/.stamp-tools: $(VENV)/bin/python
	@need=""; \
	[ -x $(VENV)/bin/ruff ] || need="$$need ruff"; \
	$(PY) -c 'import pytest' 2>/dev/null || need="$$need pytest"; \
	if [ -n "$$need" ]; then $(VENV)/bin/pip install -q $$need; fi
	@touch $@

.stamp-build: $(VENV)/.stamp-tools $(CORE_INPUTS)
	@if [ -f interceptd/_build_core.py ]; then \
	  $(VENV)/bin/pip install -q --no-build-isolation -e . ; \
	else \
	  echo "interceptd/_build_core.py not present yet: skipping the C build" >&2; \
	fi
	@touch $@

# The daemon's byte-code, written here because the daemon may run where
# PYTHONDONTWRITEBYTECODE is set: a restarted daemon (a crash's pause) then compiles
# nothing (~150 ms of its start). Cheap when up to date; the .deb's postinst does the same.
bytecode: .stamp-build
	@$(PY) -m compileall -q interceptd >/dev/null

# pip installs interceptd-runc as a Python console script; the native launcher
# (interceptd/runtime/launcher.c) takes its place, rebuilt whenever pip put the
# script back or the launcher's sources changed.
LAUNCHER := $(VENV)/bin/interceptd-runc
# The createContainer hook binding the /proc/sys values (sysctlhook.c), built with it.
SYSCTL_HOOK := interceptd/runtime/interceptd-sysctl-hook
launcher: .stamp-build
	@if ! head -c4 $(LAUNCHER) 2>/dev/null | grep -q ELF \
	    || [ interceptd/runtime/launcher.c -nt $(LAUNCHER) ] \
	    || [ interceptd/runtime/launcher.py -nt $(LAUNCHER) ] \
	    || [ interceptd/runtime/argv.py -nt $(LAUNCHER) ] \
	    || [ interceptd/runtime/sysctlhook.c -nt $(SYSCTL_HOOK) ]; then \
	  $(PY) -m interceptd.runtime.launcher $(LAUNCHER) >/dev/null; \
	  echo "built the native launcher into $(LAUNCHER) and $(SYSCTL_HOOK)"; \
	fi

run: setup
	@echo "interceptd: state dir $(STATE), config $(CONFIG)"
	@echo "Start a container under it from another shell, with any OCI bundle:"
	@echo "  INTERCEPTD_STATE_DIR=$(STATE) INTERCEPTD_CONFIG=$(abspath $(CONFIG)) \\"
	@echo "    $(abspath $(VENV))/bin/interceptd-runc run --bundle <bundle-dir> <container-id>"
	@echo "(a drop-in for runc; for Docker see packaging/docker/), or with plain runc/crun"
	@echo "and config.json linux.seccomp.listenerPath = \"$(STATE)/seccomp.sock\" plus"
	@echo "SCMP_ACT_NOTIFY rules. Then: $(VENV)/bin/interceptctl --state-dir $(STATE) containers"
	exec $(VENV)/bin/interceptd --state-dir $(STATE) --config $(CONFIG)

# pytest's exit code 5 ("no tests collected") is a failure here too.
test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -ra --durations=15 tests

bench: setup
	@rc=0; for b in bench/bench_*.py; do \
	  echo "== $$b"; $(PY) "$$b" || rc=1; \
	done; exit $$rc

deb: setup
	packaging/deb/build.sh build
	@if command -v lintian >/dev/null; then \
	  lintian --profile debian --suppress-tags-from-file packaging/deb/lintian-overrides.txt \
	    build/interceptd_*.deb || true; \
	fi

demo: setup
	$(PY) tools/demo.py

clean:
	rm -rf build *.egg-info interceptd/_core*.so interceptd/_core.c .stamp-build \
	  .pytest_cache .ruff_cache bench/out tests/.build
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
