# ebpfw — build, test and install targets.  `make test` on a fresh Debian 12 clone (as root)
# installs what it needs (scripts/setup.sh) and runs the whole suite except the slow tier.

SHELL  := /bin/bash
VENV   := .venv
PYTEST := $(VENV)/bin/pytest

# install locations (override on the command line: make install PREFIX=/opt/ebpfw)
PREFIX  ?= /opt/ebpfw
SBINDIR ?= /usr/local/sbin
MANDIR  ?= /usr/local/share/man
UNITDIR ?= /etc/systemd/system
CONFDIR ?= /etc/ebpfw
DEFAULTS ?= /etc/default/ebpfw

.PHONY: all setup test unit kernel demo conformance bench install uninstall clean

all: test

setup:
	@scripts/setup.sh

# pytest's own exit code decides: failures (1), errors (2..4) and "no tests ran" (5) all fail.
test: setup
	$(PYTEST) -m 'not slow' --timeout=600 tests

# no root needed; builds nothing (run `sudo make setup` once first)
unit:
	@test -x $(PYTEST) || { echo "make unit: $(PYTEST) missing; run 'sudo make setup' first" >&2; exit 1; }
	$(PYTEST) -m 'not slow and not kernel' tests/unit

kernel: setup
	$(PYTEST) -m 'not slow' tests/kernel

demo: setup
	bash scripts/demo.sh

conformance: setup
	$(PYTEST) tests/conformance -m 'slow or not slow'

bench: setup
	bash bench/run.sh

# A venv under $(PREFIX) holding an editable install of a copy of the package tree (so the
# BPF sources in programs/ stay next to the Python package), a wrapper in $(SBINDIR), the unit,
# man pages, /etc/default/ebpfw and an example ruleset in $(CONFDIR) (existing files are kept).
install: setup
	@test "$$(id -u)" -eq 0 || { echo "make install: run as root" >&2; exit 1; }
	install -d $(PREFIX)/src
	rm -rf $(PREFIX)/src/ebpfw $(PREFIX)/src/programs
	cp -a ebpfw programs pyproject.toml $(PREFIX)/src/
	find $(PREFIX)/src -name __pycache__ -prune -exec rm -rf {} +
	test -x $(PREFIX)/venv/bin/python || /usr/bin/python3 -m venv --system-site-packages $(PREFIX)/venv
	$(PREFIX)/venv/bin/pip install -q --disable-pip-version-check -e $(PREFIX)/src
	install -d $(SBINDIR)
	printf '#!/bin/sh\nexec %s/venv/bin/ebpfw "$$@"\n' '$(PREFIX)' > $(SBINDIR)/ebpfw.tmp
	chmod 755 $(SBINDIR)/ebpfw.tmp && mv $(SBINDIR)/ebpfw.tmp $(SBINDIR)/ebpfw
	install -D -m 644 systemd/ebpfw.service $(UNITDIR)/ebpfw.service
	install -d $(MANDIR)/man5 $(MANDIR)/man8
	for f in man/*.5; do [ -e "$$f" ] && install -m 644 "$$f" $(MANDIR)/man5/ || true; done
	for f in man/*.8; do [ -e "$$f" ] && install -m 644 "$$f" $(MANDIR)/man8/ || true; done
	@command -v mandb >/dev/null && mandb -q >/dev/null 2>&1 || true
	install -d -m 755 $(CONFDIR)
	test -e $(CONFDIR)/rules.v4 || install -m 644 systemd/rules.v4.example $(CONFDIR)/rules.v4
	install -m 644 etc/ebpfw.toml.example $(CONFDIR)/ebpfw.toml.example
	test -e $(CONFDIR)/ebpfw.toml || install -m 644 etc/ebpfw.toml.example $(CONFDIR)/ebpfw.toml
	test -e $(DEFAULTS) || install -D -m 644 systemd/ebpfw.default $(DEFAULTS)
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed; edit $(CONFDIR)/ebpfw.toml and $(CONFDIR)/rules.v4, check with 'ebpfw agent --check', then: systemctl enable --now ebpfw"

# Leaves /etc/ebpfw, /etc/default/ebpfw and anything still attached alone (run `ebpfw detach` first).
uninstall:
	rm -f $(SBINDIR)/ebpfw $(UNITDIR)/ebpfw.service
	for f in man/*.5; do rm -f $(MANDIR)/man5/$$(basename $$f); done
	for f in man/*.8; do rm -f $(MANDIR)/man8/$$(basename $$f); done
	rm -rf $(PREFIX)
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis bench-results
	find . -name __pycache__ -prune -exec rm -rf {} +
